"""Keystone v3 for the fake OpenStack: the password login, and the catalog naming the others."""

from __future__ import annotations

import uuid
from typing import Any

from tests.infra.fake_openstack_http import Plumbing
from tests.infra.fake_openstack_state import PASSWORD, PROJECT, USER


class IdentityAPI(Plumbing):
    """/identity: Keystone v3."""

    def identity(self, method: str, path: str) -> None:
        v3 = {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self.base}/identity/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }
        if method == "GET" and path == "":
            return self.send(300, {"versions": {"values": [v3]}})
        if method == "GET" and path == "/v3":
            return self.send(200, {"version": v3})
        if method == "POST" and path == "/v3/auth/tokens":
            auth = self.body().get("auth", {})
            password = auth.get("identity", {}).get("password", {}).get("user", {})
            if password.get("name") != USER or password.get("password") != PASSWORD:
                return self.send(401, {"error": {"code": 401, "message": "bad credentials"}})
            return self.send(201, self.token(), {"X-Subject-Token": uuid.uuid4().hex})
        self.not_found()

    def token(self) -> dict[str, Any]:
        def service(kind: str, name: str, url: str) -> dict[str, Any]:
            return {
                "type": kind,
                "name": name,
                "id": uuid.uuid4().hex,
                "endpoints": [
                    {
                        "id": uuid.uuid4().hex,
                        "interface": iface,
                        "region": "RegionOne",
                        "region_id": "RegionOne",
                        "url": url,
                    }
                    for iface in ("public", "internal", "admin")
                ],
            }

        return {
            "token": {
                "methods": ["password"],
                "expires_at": "2099-01-01T00:00:00.000000Z",
                "issued_at": "2026-01-01T00:00:00.000000Z",
                "user": {"id": "u1", "name": USER, "domain": {"id": "default", "name": "Default"}},
                "project": {
                    "id": "p1",
                    "name": PROJECT,
                    "domain": {"id": "default", "name": "Default"},
                },
                "roles": [{"id": "r1", "name": "member"}],
                "catalog": [
                    service("identity", "keystone", f"{self.base}/identity/v3"),
                    service("compute", "nova", f"{self.base}/compute/v2.1"),
                    service("network", "neutron", f"{self.base}/network"),
                    service("image", "glance", f"{self.base}/image"),
                ],
            }
        }
