"""A small fake OpenStack (Keystone v3, Nova, Neutron, Glance) on loopback, for tests.

Real HTTP, real openstacksdk / gophercloud on the other side: it answers the calls `appliance
deploy` / `destroy` and Packer's openstack builder make, keeps what they create in memory, and
"boots" servers: a server turns ACTIVE after a few polls and its console then shows the
final_message of its user-data, as cloud-init prints it.

    python -m tests.infra.fake_openstack exec -- packer validate ...   # OS_* variables point here
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

USER = "demo"
PASSWORD = "secret"
PROJECT = "appliance"

# Collections: URL prefix -> (service, collection path, JSON key for one, JSON key for many)
NEUTRON = {
    "networks": ("network", "networks"),
    "security-groups": ("security_group", "security_groups"),
    "security-group-rules": ("security_group_rule", "security_group_rules"),
    "ports": ("port", "ports"),
    "floatingips": ("floatingip", "floatingips"),
}


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


class Handler(BaseHTTPRequestHandler):
    cloud: FakeCloud
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, delayed ACKs add 40 ms to each call.
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}") if length else {}

    def not_found(self) -> None:
        self.send(
            404,
            {
                "itemNotFound": {"code": 404, "message": f"{self.path} not found"},
                "NeutronError": {"type": "NotFound", "message": "not found"},
            },
        )

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_PUT(self) -> None:
        self.route("PUT")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def route(self, method: str) -> None:
        url = urlparse(self.path)
        path = url.path.rstrip("/")
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.cloud.lock:
            self.cloud.requests.append((method, path))
            try:
                if path.startswith("/identity"):
                    self.identity(method, path.removeprefix("/identity"))
                elif path.startswith("/compute"):
                    self.compute(method, path.removeprefix("/compute"), query)
                elif path.startswith("/network"):
                    self.network(method, path.removeprefix("/network"), query)
                elif path.startswith("/image"):
                    self.image(method, path.removeprefix("/image"), query)
                else:
                    self.not_found()
            except Exception as exc:  # a bug in the fake shows up as a 500 with its reason
                self.send(500, {"error": repr(exc)})

    # -- Keystone ------------------------------------------------------------------------------
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

    # -- Nova ----------------------------------------------------------------------------------
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

    # -- Neutron -------------------------------------------------------------------------------
    def network(self, method: str, path: str, query: dict[str, str]) -> None:
        if method == "GET" and path == "":
            return self.send(
                200,
                {
                    "versions": [
                        {
                            "id": "v2.0",
                            "status": "CURRENT",
                            "links": [{"rel": "self", "href": f"{self.base}/network/v2.0/"}],
                        }
                    ]
                },
            )
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

    # -- Glance --------------------------------------------------------------------------------
    def image(self, method: str, path: str, query: dict[str, str]) -> None:
        if method == "GET" and path == "":
            return self.send(
                300,
                {
                    "versions": [
                        {
                            "id": "v2.15",
                            "status": "CURRENT",
                            "links": [{"rel": "self", "href": f"{self.base}/image/v2/"}],
                        }
                    ]
                },
            )
        if method == "GET" and path == "/v2/images":
            found = [
                i
                for i in self.cloud.images.values()
                if all(str(i.get(k)) == v for k, v in query.items() if k in ("name", "id"))
            ]
            return self.send(200, {"images": found})
        if (m := re.fullmatch(r"/v2/images/([^/]+)", path)) and method == "GET":
            image = self.cloud.images.get(m[1])
            return self.send(200, image) if image else self.not_found()
        self.not_found()


class FakeOpenStack:
    """Start with `with FakeOpenStack() as fake:`; fake.env has the OS_* variables for it."""

    def __init__(self) -> None:
        self.cloud = FakeCloud()
        handler = type("BoundHandler", (Handler,), {"cloud": self.cloud})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "OS_AUTH_URL": f"{self.url}/identity/v3",
            "OS_AUTH_TYPE": "password",
            "OS_USERNAME": USER,
            "OS_PASSWORD": PASSWORD,
            "OS_PROJECT_NAME": PROJECT,
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
            "OS_REGION_NAME": "RegionOne",
            "OS_IDENTITY_API_VERSION": "3",
            "OS_INTERFACE": "public",
        }

    def __enter__(self) -> FakeOpenStack:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str]) -> int:
    """`exec -- CMD ...`: run CMD with the OS_* variables pointing at a fake cloud."""
    if len(argv) < 2 or argv[0] != "exec":
        print(__doc__, file=sys.stderr)
        return 64
    command = argv[2:] if argv[1] == "--" else argv[1:]
    with FakeOpenStack() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(fake.env)
        return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
