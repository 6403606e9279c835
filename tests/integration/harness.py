"""Processes the integration tests drive besides the server: the consumers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
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


class Relay:
    """A TCP relay on a loopback port to a real server, for peers that are late or slow.

    Nothing listens on its port until :meth:`start` (a peer that has not booted yet). With
    ``hold=True`` it accepts connections but keeps them silent until :meth:`release` (a peer that
    takes connections but is too loaded to answer), then relays as usual.
    """

    def __init__(self, target: tuple[str, int], hold: bool = False) -> None:
        self.target = target
        self.holding = hold
        self.held: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def start(self) -> Relay:
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def release(self) -> None:
        """Relay from now on; connections held so far are closed (their clients retry)."""
        self.holding = False
        for held in self.held:
            held.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.holding:
                self.held.append(client)
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self.listener.close()
        self.release()
