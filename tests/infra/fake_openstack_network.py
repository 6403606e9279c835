"""Neutron for the fake OpenStack: networks, security groups and rules, ports, floating IPs."""

from __future__ import annotations

import re
import uuid
from typing import Any

from tests.infra.fake_openstack_http import Plumbing

# Collections: URL path -> (JSON key for one, JSON key for many)
NEUTRON = {
    "networks": ("network", "networks"),
    "security-groups": ("security_group", "security_groups"),
    "security-group-rules": ("security_group_rule", "security_group_rules"),
    "ports": ("port", "ports"),
    "floatingips": ("floatingip", "floatingips"),
}


class NetworkAPI(Plumbing):
    """/network: Neutron v2.0."""

    def network(self, method: str, path: str, query: dict[str, str]) -> None:
        if method == "GET" and path == "":
            return self.send_versions(200, "v2.0", "/network/v2.0/")
        m = re.fullmatch(r"/v2\.0/([a-z-]+)(?:/([^/]+))?", path)
        if not m or m[1] not in NEUTRON:
            return self.not_found()
        collection, item_id = m[1], m[2]
        one, many = NEUTRON[collection]
        items = self.cloud.neutron[collection]
        if item_id is None and method == "GET":
            found = [
                i
                for i in items.values()
                if all(str(i.get(k)) == v for k, v in query.items() if k not in ("fields",))
            ]
            return self.send(200, {many: found})
        if item_id is None and method == "POST":
            return self.create(collection, self.body()[one])
        if item_id not in items:
            return self.not_found()
        if method == "DELETE":
            if collection == "ports" and items[item_id].get("device_id"):
                return self.send(409, {"NeutronError": {"message": "port in use"}})
            if collection == "security-groups" and any(
                item_id in p.get("security_groups", [])
                for p in self.cloud.neutron["ports"].values()
            ):
                return self.send(409, {"NeutronError": {"message": "group in use"}})
            del items[item_id]
            return self.send(204)
        self.send(200, {one: items[item_id]})

    def create(self, collection: str, spec: dict[str, Any]) -> None:
        cloud = self.cloud
        one = NEUTRON[collection][0]
        item = dict(spec, id=str(uuid.uuid4()), tenant_id="p1", project_id="p1")
        if collection == "ports":
            if spec.get("network_id") not in cloud.networks:
                return self.send(404, {"NeutronError": {"message": "network not found"}})
            item.setdefault("fixed_ips", [{"ip_address": cloud.next_ip(), "subnet_id": "s1"}])
            item.setdefault("security_groups", [])
            item.update(device_id="", status="DOWN", mac_address="fa:16:3e:00:00:01")
        elif collection == "security-groups":
            item["security_group_rules"] = []
        elif collection == "security-group-rules":
            group = cloud.neutron["security-groups"].get(spec.get("security_group_id", ""))
            if group is None:
                return self.send(404, {"NeutronError": {"message": "group not found"}})
            group["security_group_rules"].append(item)
        elif collection == "floatingips":
            item.update(floating_ip_address=cloud.next_fip(), status="ACTIVE")
        cloud.neutron[collection][item["id"]] = item
        self.send(201, {one: item})
