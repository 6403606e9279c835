"""Nova for the fake OpenStack: flavors, key pairs, and servers that boot after a few polls."""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any

import yaml

from tests.infra.fake_openstack_http import Plumbing


class ComputeAPI(Plumbing):
    """/compute: Nova, API 2.1."""

    def compute(self, method: str, path: str, query: dict[str, str]) -> None:
        cloud = self.cloud
        version = {
            "id": "v2.1",
            "status": "CURRENT",
            "version": "2.79",
            "min_version": "2.1",
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{self.base}/compute/v2.1/"}],
        }
        if method == "GET" and path == "":
            return self.send(200, {"versions": [version]})
        if method == "GET" and path == "/v2.1":
            return self.send(200, {"version": version})
        path = path.removeprefix("/v2.1")
        if method == "GET" and path in ("/flavors", "/flavors/detail"):
            return self.send(200, {"flavors": list(cloud.flavors.values())})
        if m := re.fullmatch(r"/flavors/([^/]+)", path):
            flavor = cloud.flavors.get(m[1])
            return self.send(200, {"flavor": flavor}) if flavor else self.not_found()
        if path == "/os-keypairs":
            if method == "GET":
                return self.send(
                    200, {"keypairs": [{"keypair": k} for k in cloud.keypairs.values()]}
                )
            if method == "POST":
                pair = self.body()["keypair"]
                pair.setdefault("public_key", "ssh-ed25519 AAAA generated")
                pair.update(fingerprint="00:11", type="ssh")
                cloud.keypairs[pair["name"]] = pair
                return self.send(200, {"keypair": pair})
        if m := re.fullmatch(r"/os-keypairs/([^/]+)", path):
            pair = cloud.keypairs.get(m[1])
            if pair is None:
                return self.not_found()
            if method == "DELETE":
                del cloud.keypairs[m[1]]
                return self.send(202)
            return self.send(200, {"keypair": pair})
        if path == "/servers" and method == "POST":
            return self.create_server(self.body()["server"])
        if path in ("/servers", "/servers/detail") and method == "GET":
            servers = [self.poll(s) for s in cloud.servers.values()]
            if "name" in query:
                servers = [s for s in servers if re.search(query["name"], s["name"])]
            return self.send(200, {"servers": servers})
        if m := re.fullmatch(r"/servers/([^/]+)", path):
            server = cloud.servers.get(m[1])
            if server is None:
                return self.not_found()
            if method == "DELETE":
                del cloud.servers[m[1]]
                for port in cloud.neutron["ports"].values():
                    if port.get("device_id") == m[1]:
                        port["device_id"] = ""
                return self.send(204)
            return self.send(200, {"server": self.poll(server)})
        if (m := re.fullmatch(r"/servers/([^/]+)/action", path)) and method == "POST":
            server = cloud.servers.get(m[1])
            if server is None:
                return self.not_found()
            if "os-getConsoleOutput" in self.body():
                return self.send(
                    200, {"output": server["_console"] if server["status"] == "ACTIVE" else ""}
                )
        self.not_found()

    def create_server(self, spec: dict[str, Any]) -> None:
        cloud = self.cloud
        sid = str(uuid.uuid4())
        addresses: dict[str, list[dict[str, Any]]] = {}
        for net in spec.get("networks", []):
            port = cloud.neutron["ports"].get(net.get("port", ""))
            if port is None:
                return self.send(400, {"badRequest": {"code": 400, "message": "port not found"}})
            port["device_id"] = sid
            network = cloud.networks[port["network_id"]]["name"]
            addresses.setdefault(network, []).extend(
                {"addr": ip["ip_address"], "version": 4, "OS-EXT-IPS:type": "fixed"}
                for ip in port["fixed_ips"]
            )
        if spec.get("imageRef") not in cloud.images:
            return self.send(400, {"badRequest": {"code": 400, "message": "image not found"}})
        if spec.get("flavorRef") not in cloud.flavors:
            return self.send(400, {"badRequest": {"code": 400, "message": "flavor not found"}})
        user_data = base64.b64decode(spec.get("user_data", "")).decode()
        final = ""
        if user_data.startswith("#cloud-config"):
            message = (yaml.safe_load(user_data) or {}).get("final_message", "")
            final = message.replace("$UPTIME", "12.34")
        server = {
            "id": sid,
            "name": spec["name"],
            "status": "BUILD",
            "addresses": addresses,
            "image": {"id": spec["imageRef"]},
            "flavor": {"id": spec["flavorRef"]},
            "key_name": spec.get("key_name"),
            "metadata": spec.get("metadata", {}),
            "tenant_id": "p1",
            "user_id": "u1",
            "links": [],
            "_polls": 0,
            "_console": f"[   12.3] cloud-init[800]: {final}\n",
        }
        cloud.servers[sid] = server
        cloud.user_data[spec["name"]] = user_data
        self.send(202, {"server": {"id": sid, "links": [], "adminPass": "x"}})

    def poll(self, server: dict[str, Any]) -> dict[str, Any]:
        server["_polls"] += 1
        if server["status"] == "BUILD" and server["_polls"] > self.cloud.polls_to_active:
            server["status"] = "ERROR" if server["name"] in self.cloud.fail_servers else "ACTIVE"
        return {k: v for k, v in server.items() if not k.startswith("_")}
