"""The inference server as a child process: start it, wait for every worker's model, stop it.

`appliance pipeline`, the serving benchmark and the tests all start it through this class, exactly
as `appliance serve` runs it. Only the standard library is imported here: the Gunicorn config
imports :func:`default_workers` in the master, which must stay free of TensorFlow.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """One worker per core, at most 4: each holds a model of its own."""
    return min(cores(), 4)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class ServerProcess:
    """``appliance serve`` on a loopback port, in its own process group; restartable."""

    def __init__(
        self,
        model_path: str | Path,
        log_path: Path,
        *,
        port: int | None = None,
        workers: int | None = None,
        env: Mapping[str, str] | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.workers = workers or default_workers()
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        if MULTIPROC_ENV not in (env or {}):
            self.env.pop(MULTIPROC_ENV, None)  # the Gunicorn config makes a fresh one
        self.argv = [sys.executable, "-m", "appliance", "serve", "--model", str(model_path),
                     "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
                     *options]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        # (status, JSON body) of each /healthz answer seen while waiting.
        self.health_history: list[tuple[int, dict]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 300.0) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def log(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def _check_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"inference server exited ({code}):\n{self.log()}")

    def wait_health(self, want: int, status: str | None = None, timeout: float = 300.0) -> dict:
        """Poll /healthz until it answers ``want`` (and ``status``, if given); return the body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            try:
                code, raw = http_get(self.port, "/healthz")
                body = json.loads(raw)
            except (OSError, ValueError):
                time.sleep(0.2)
                continue
            self.health_history.append((code, body))
            if code == want and status in (None, body.get("status")):
                return body
            if want == 200 and body.get("status") == "error":
                raise RuntimeError(f"inference server could not load the model: {body}")
            time.sleep(0.2)
        raise RuntimeError(
            f"/healthz never answered {want} {status or ''} in {timeout:.0f}s:\n{self.log()}"
        )

    def wait_ready(self, timeout: float = 300.0) -> dict:
        """Until every worker has its model: /healthz speaks only for the worker that answers."""
        deadline = time.monotonic() + timeout
        health = self.wait_health(200, timeout=timeout)
        while (self.metric("appliance_model_ready_workers") or 0) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {self.workers} workers ready in {timeout:.0f}s")
            self._check_running()
            time.sleep(0.25)
        return health

    def metric(self, name: str) -> float | None:
        """One unlabelled sample from /metrics, or None."""
        try:
            _, text = http_get(self.port, "/metrics")
        except OSError:
            return None
        match = re.search(rb"^" + re.escape(name.encode()) + rb" (\S+)$", text, re.M)
        return float(match[1]) if match else None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Gunicorn's graceful stop), then SIGKILL to the whole group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
