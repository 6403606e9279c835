"""JSON over HTTP for the fake OpenStack: what each of its services' handlers shares."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.infra.fake_openstack_state import FakeCloud


class Plumbing(BaseHTTPRequestHandler):
    """JSON in and out, and the 404 both Nova's and Neutron's clients understand."""

    cloud: FakeCloud
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, delayed ACKs add 40 ms to each call.
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:  # quiet
        pass

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

    def send_versions(self, status: int, version: str, path: str) -> None:
        """An API's version list, where the SDK's discovery looks first (Glance answers 300)."""
        link = {"rel": "self", "href": f"{self.base}{path}"}
        self.send(status, {"versions": [{"id": version, "status": "CURRENT", "links": [link]}]})

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
