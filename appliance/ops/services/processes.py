"""The service processes and their ports: start one detached, tell whether it still runs, stop it,
and check that the ports it needs are free."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from appliance.ops.services.config import (
    DEFAULT_STOP_TIMEOUT_S,
    ENV_KAFKA_CONTROLLER_PORT,
    ENV_KAFKA_INTERNAL_PORT,
    ENV_KAFKA_PORT,
    ENV_MONGODB_PORT,
    HOST,
    ServiceError,
    ServicesConfig,
)

# Children started by this Python process: kept so they can be reaped (a zombie still "exists" to
# kill(pid, 0)) and so Popen does not warn that they are still running when it is collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn_detached(
    command: list[str], log_path: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start a service in its own session so it outlives the CLI and ignores the shell's Ctrl-C.
    ``env`` adds to this process's environment (secrets go there: never on a command line)."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def process_alive(pid: int, match: str) -> bool:
    """Whether `pid` is still running *and* is the service: pids get reused after a reboot."""
    child = _CHILDREN.get(pid)
    if child is not None:
        # Our own child: its pid cannot be reused before we reap it, and just after exec its
        # /proc command line may still read as empty.
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A zombie (state Z, after the closing paren of the command name) holds no ports: gone.
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):
        return False
    return match.encode() in cmdline


def stop_process(pid: int, match: str, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
    """SIGTERM (Kafka then shuts down cleanly), SIGKILL if it is still there after `timeout_s`."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not process_alive(pid, match):
            break
        _signal_group(pid, sig)
        deadline = time.monotonic() + wait_s
        while process_alive(pid, match) and time.monotonic() < deadline:
            time.sleep(0.2)
    if process_alive(pid, match):
        raise ServiceError(f"process {pid} ({match}) did not stop even after SIGKILL")
    _CHILDREN.pop(pid, None)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The service leads its own session; signal its whole group so no helper is left behind.
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Connections of a service that just stopped linger in TIME_WAIT; they do not block a
        # new listener (the services set SO_REUSEADDR too), so they must not fail this check.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(config: ServicesConfig) -> None:
    wanted = [
        ("Kafka", config.kafka_port, ENV_KAFKA_PORT),
        ("Kafka controller", config.kafka_controller_port, ENV_KAFKA_CONTROLLER_PORT),
        ("MongoDB", config.mongodb_port, ENV_MONGODB_PORT),
        ("Kafka's internal listener", config.kafka_internal_port, ENV_KAFKA_INTERNAL_PORT),
    ]
    for label, port, env_name in wanted:
        if not port_free(port):
            raise ServiceError(
                f"port {port} on {HOST} (for {label}) is already in use by another program: "
                f"stop it, or pick another port with {env_name}=<port>"
            )
