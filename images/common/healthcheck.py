#!/opt/appliance/bin/python
"""Container health: is this container's part of the pipeline able to do its work right now?

One script for every Python image. It tells the role from the container's processes (or
APPLIANCE_HEALTHCHECK=broker|producer|consume-db|consume-inference|server|none) and checks what
that role needs, printing one line either way (Docker keeps it: `docker inspect`, `appliance
stack status`):

- broker: the local Kafka broker answers an ApiVersions request (not via advertised addresses;
  with KAFKA_SECURITY_PROTOCOL=SASL_SSL on its loopback INTERNAL listener, and only once the
  entrypoint has set the clients' login);
- producer: a broker in KAFKA_BOOTSTRAP_SERVERS answers (over TLS, verified against
  KAFKA_CA_FILE, with SASL_SSL: Kafka answers ApiVersions before the login);
- consume-db: that, and MongoDB (MONGODB_URI) answers `ping`;
- consume-inference: that, and the inference server's /healthz (INFERENCE_URL) says 200;
- server: this container's /healthz says 200 (the model is loaded).

Standard library only, except pymongo for the MongoDB ping (the images that run consume-db have it).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

TIMEOUT_S = 4.0


def kafka_answers(address: str, tls: ssl.SSLContext | None = None) -> str | None:
    """None when a broker at HOST:PORT answers ApiVersions (v0), else why not."""
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]") or "localhost"
    client = b"appliance-healthcheck"
    # Request header v1: api_key 18 (ApiVersions), version 0, correlation id, client id.
    body = struct.pack(">hhih", 18, 0, 1, len(client)) + client
    try:
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as raw:
            sock = tls.wrap_socket(raw, server_hostname=host) if tls else raw
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exactly(sock, 10)
    except (OSError, ValueError) as exc:
        return f"kafka {address}: {exc}"
    _size, correlation, error = struct.unpack(">iih", head)
    if correlation != 1 or error != 0:
        return f"kafka {address}: ApiVersions answered with error code {error}"
    return None


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise OSError("connection closed before a full answer")
        data += chunk
    return data


def sasl_ssl() -> bool:
    return os.environ.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper() == "SASL_SSL"


def any_broker() -> str | None:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092").split(",")
    tls = None
    if sasl_ssl():
        try:
            tls = ssl.create_default_context(cafile=os.environ.get("KAFKA_CA_FILE") or None)
        except OSError as exc:
            return f"KAFKA_CA_FILE: {exc}"
    problems = []
    for server in servers:
        problem = kafka_answers(server, tls)
        if problem is None:
            return None
        problems.append(problem)
    return "; ".join(problems)


def local_broker() -> str | None:
    if not sasl_ssl():
        return kafka_answers(f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")
    problem = kafka_answers(f"127.0.0.1:{os.environ.get('KAFKA_INTERNAL_PORT', '9094')}")
    config_dir = Path(os.environ.get("KAFKA_CONFIG_DIR", "/var/lib/kafka/config"))
    if problem is None and not (config_dir / "login.ready").exists():
        problem = "the clients' SCRAM login is not set yet (see the container's log)"
    return problem


def mongodb() -> str | None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    uri = os.environ.get("MONGODB_URI", "mongodb://localhost:27017")
    timeout_ms = int(TIMEOUT_S * 1000)
    client: MongoClient = MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        client.admin.command("ping")
        return None
    except PyMongoError as exc:
        return f"mongodb {uri}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        client.close()


def http_ok(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            if response.status == 200:
                return None
            return f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"


def inference_server() -> str | None:
    base = os.environ.get("INFERENCE_URL", "http://localhost:8000").rstrip("/")
    return http_ok(f"{base}/healthz")


def this_server() -> str | None:
    bind = os.environ.get("SERVER_BIND", "").strip() or "0.0.0.0:8000"
    port = bind.rpartition(":")[2]
    return http_ok(f"http://127.0.0.1:{port}/healthz")


CHECKS: dict[str, list[Callable[[], str | None]]] = {
    "broker": [local_broker],
    "producer": [any_broker],
    "consume-db": [any_broker, mongodb],
    "consume-inference": [any_broker, inference_server],
    "server": [this_server],
    "none": [],
}


def command_lines() -> list[list[str]]:
    """Every other process's command line, as base names: PID 1 may be docker-init (--init)."""
    lines = []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            words = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        lines.append([os.path.basename(word.decode(errors="replace")) for word in words])
    return lines


def role() -> str:
    chosen = os.environ.get("APPLIANCE_HEALTHCHECK", "").strip()
    if chosen:
        return chosen
    names = {name for line in command_lines() for name in line}
    if "kafka.Kafka" in names:
        return "broker"
    for name in ("consume-db", "consume-inference"):
        if name in names:
            return name
    if "produce" in names:
        return "producer"
    if "serve" in names or any("gunicorn" in name for name in names):
        return "server"
    return "none"


def main() -> int:
    which = role()
    if which not in CHECKS:
        print(f"unknown APPLIANCE_HEALTHCHECK {which!r}; one of {', '.join(CHECKS)}")
        return 1
    for check in CHECKS[which]:
        problem = check()
        if problem is not None:
            print(f"{which}: {problem}")
            return 1
    print(f"{which}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
