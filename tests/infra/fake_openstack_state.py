"""The fake OpenStack's state (flavors, networks, images, servers...) and the one login it takes."""

from __future__ import annotations

import itertools
import threading
import uuid
from typing import Any

USER = "demo"
PASSWORD = "secret"
PROJECT = "appliance"


class FakeCloud:
    """The cloud's state; tests read and tweak it directly."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.polls_to_active = 2
        # Server names whose boot fails (status ERROR).
        self.fail_servers: set[str] = set()
        ip_counter = itertools.count(10)
        self.next_ip = lambda: f"10.0.0.{next(ip_counter)}"
        fip_counter = itertools.count(100)
        self.next_fip = lambda: f"203.0.113.{next(fip_counter)}"
        self.flavors = {
            fid: {"id": fid, "name": name, "vcpus": cpus, "ram": ram, "disk": 40}
            for fid, name, cpus, ram in [("f1", "m1.medium", 2, 4096), ("f2", "m1.large", 4, 8192)]
        }
        self.networks: dict[str, dict[str, Any]] = {}
        for name, external in [("sharednet1", False), ("public", True)]:
            nid = str(uuid.uuid4())
            self.networks[nid] = {
                "id": nid,
                "name": name,
                "router:external": external,
                "status": "ACTIVE",
                "subnets": [],
            }
        self.images: dict[str, dict[str, Any]] = {}
        self.keypairs: dict[str, dict[str, Any]] = {}
        self.servers: dict[str, dict[str, Any]] = {}
        self.user_data: dict[str, str] = {}
        self.neutron: dict[str, dict[str, dict[str, Any]]] = {
            "networks": self.networks,
            "security-groups": {},
            "security-group-rules": {},
            "ports": {},
            "floatingips": {},
        }

    def add_image(self, name: str, created_at: str = "2026-11-01T00:00:00Z") -> str:
        iid = str(uuid.uuid4())
        self.images[iid] = {
            "id": iid,
            "name": name,
            "status": "active",
            "created_at": created_at,
            "updated_at": created_at,
            "visibility": "private",
            "tags": [],
        }
        return iid

    def network_id(self, name: str) -> str:
        return next(n["id"] for n in self.networks.values() if n["name"] == name)

    def named(self, collection: str) -> dict[str, dict[str, Any]]:
        return {item.get("name", ""): item for item in self.neutron[collection].values()}
