"""Loads for the serving benchmark: worker threads that make images/s, switched on and off.

``InProcess`` calls the server's compiled model at batch B in this process; ``Clients`` are C
persistent HTTP connections each sending single-image requests. Both count finished images while
switched on, so the benchmark can let them take turns.
"""

from __future__ import annotations

import http.client
import threading
import time

import numpy as np


class Load:
    """Worker threads that count finished images while ``go`` is set, until ``stop``."""

    def __init__(self, count: int) -> None:
        self.go = threading.Event()
        self.stop = threading.Event()
        self._done = [0] * count
        self._busy = [False] * count
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def done(self) -> int:
        return sum(self._done)

    def run_for(self, seconds: float) -> None:
        self.go.set()
        time.sleep(seconds)
        self.pause()

    def pause(self, timeout: float = 30.0) -> None:
        """Switch off and wait for the work in flight to finish."""
        self.go.clear()
        deadline = time.monotonic() + timeout
        while any(self._busy) and time.monotonic() < deadline:
            time.sleep(0.02)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def finish(self) -> None:
        """Stop for good (``go`` is set too, to wake paused threads)."""
        self.stop.set()
        self.go.set()

    def _run(self, index: int) -> None:
        while True:
            # Paused threads block here without polling: 256 pollers would slow what is measured.
            self.go.wait()
            if self.stop.is_set():
                break
            self._busy[index] = True
            try:
                self._done[index] += self.step(index)
            finally:
                self._busy[index] = False
        self.close(index)

    def step(self, index: int) -> int:
        """Do one unit of work; return the images it finished."""
        raise NotImplementedError

    def close(self, index: int) -> None:
        """Release what thread ``index`` holds."""


class InProcess(Load):
    """The server's compiled model call, at batch B, in this process."""

    def __init__(self, model_path: str, batch: int, backend: str = "tensorflow") -> None:
        from appliance.server import backends

        super().__init__(1)
        loaded = backends.load(model_path, threads=0)
        # The very function the server's batcher calls, on the same backend.
        self.call = backends.model_call(backend, loaded, threads=0)
        size = loaded.input_size
        self.batch = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
        self.call(self.batch)  # trace outside the measurement

    def step(self, index: int) -> int:
        self.call(self.batch)
        return len(self.batch)


class Clients(Load):
    """C threads, each one persistent connection sending one single-image request after another."""

    def __init__(self, port: int, bodies: list[bytes], count: int) -> None:
        super().__init__(count)
        self.port = port
        self.bodies = bodies
        self.first_error: str | None = None
        self._errors = [0] * count
        self._sent = [0] * count
        self._conns: list[http.client.HTTPConnection | None] = [None] * count

    def errors(self) -> int:
        return sum(self._errors)

    def step(self, index: int) -> int:
        conn = self._conns[index]
        if conn is None:
            conn = self._conns[index] = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=120
            )
        body = self.bodies[(index + self._sent[index]) % len(self.bodies)]
        self._sent[index] += 1
        try:
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._conns[index] = None
            if not self.stop.is_set():  # the server going away at the end is no error
                self._error(index, f"{type(exc).__name__}: {exc}")
            return 0
        if response.status != 200:
            self._error(index, f"HTTP {response.status}")
            return 0
        return 1

    def close(self, index: int) -> None:
        conn = self._conns[index]
        if conn is not None:
            conn.close()

    def _error(self, index: int, reason: str) -> None:
        self._errors[index] += 1
        if self.first_error is None:
            self.first_error = reason
