"""Processes the integration tests drive besides the server: the consumers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.config import Settings

PYTHON = sys.executable


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as the environment variables every component reads."""
    return {**os.environ, **settings.to_env()}


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
