"""A small fake OpenStack (Keystone v3, Nova, Neutron, Glance) on loopback, for tests.

Real HTTP, real openstacksdk / gophercloud on the other side: it answers the calls `appliance
deploy` / `destroy` and Packer's openstack builder make, keeps what they create in memory, and
"boots" servers: a server turns ACTIVE after a few polls and its console then shows the
final_message of its user-data, as cloud-init prints it.

    python -m tests.infra.fake_openstack exec -- packer validate ...   # OS_* variables point here
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from tests.infra.fake_openstack_compute import ComputeAPI
from tests.infra.fake_openstack_identity import IdentityAPI
from tests.infra.fake_openstack_image import ImageAPI
from tests.infra.fake_openstack_network import NetworkAPI
from tests.infra.fake_openstack_state import PASSWORD, PROJECT, USER, FakeCloud


class Handler(IdentityAPI, ComputeAPI, NetworkAPI, ImageAPI):
    """All four services on one port, each under the URL prefix the catalog gives it."""

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
