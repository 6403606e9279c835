"""When a deployed server counts as up: its console shows cloud-init's final message, and its
service port answers (MongoDB and Kafka a TCP connection, the ml-server's /healthz a 200)."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from appliance.cloud import topology

log = logging.getLogger(__name__)


def wait_until(what: str, check: Callable[[], bool], timeout: float, poll: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(poll)


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def health_check(role: str, host: str) -> Callable[[], bool] | None:
    """What answers once ROLE's container is serving; None where nothing listens (producer)."""
    hp = topology.host_port(host, 0).rsplit(":", 1)[0]
    if role == "ml-server":
        return lambda: http_ok(f"http://{hp}:{topology.ML_SERVER_PORT}/healthz")
    if role == "kafka":
        return lambda: tcp_open(host, topology.KAFKA_PORT)
    if role == "mongodb":
        return lambda: tcp_open(host, topology.MONGODB_PORT)
    return None


def console_says_finished(conn: Any, server_id: str, role: str) -> bool:
    try:
        output = conn.compute.get_server_console_output(server_id).get("output") or ""
    except Exception as exc:  # some clouds refuse console logs for a while after boot
        log.debug("console of %s not readable yet: %s", role, exc)
        return False
    return f"appliance {role}: cloud-init finished" in output
