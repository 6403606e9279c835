"""Processes the integration tests drive: the inference server and the consumers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import requests

from appliance.config import Settings

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`appliance serve` under Gunicorn on a fixed loopback port, stoppable and restartable."""

    def __init__(self, model_path: Path, log_path: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_path = model_path
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> ServerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "appliance",
                "serve",
                "--model",
                str(self.model_path),
                "--bind",
                f"127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AssertionError(
            f"server not healthy in {timeout}s: {self.log_path.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as the environment variables every component reads."""
    return {**os.environ, **{k.upper(): str(v) for k, v in asdict(settings).items()}}


class ConsumerProcess:
    """A consumer subprocess (`appliance consume-db` or `consume-inference`)."""

    def __init__(self, command: str, settings: Settings, log_path: Path):
        self.command, self.settings, self.log_path = command, settings, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> ConsumerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "appliance", self.command],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=settings_env(self.settings),
            start_new_session=True,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)
            self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def wait_for(
    predicate, timeout: float, what: str, interval: float = 0.5, on_timeout=lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}. {on_timeout()}")
