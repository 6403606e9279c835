"""Stopping a training run cleanly on SIGINT or SIGTERM.

The first signal asks the run to finish the step under way, save a checkpoint of exactly that
step and exit, so a Ctrl-C or the end of a session loses no training: the same command resumes
there. A second signal stops at once, as a crash would (the last checkpoint stays).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("appliance.ml.train")  # the run's own logger

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """Set by the first stopping signal; read by the run after every step."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process that a signal ended."""
        return 128 + (self.signum or 0)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the request instead of ending the process."""
    request = StopRequest()
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handle(signum: int, frame) -> None:
        request.signum = signum
        for s, handler in previous.items():  # the next signal acts as it would have
            signal.signal(s, handler)
        log.warning(
            "%s: stopping after the step under way, with a checkpoint of it (send it again to "
            "stop at once)",
            request.name,
        )

    for s in SIGNALS:
        signal.signal(s, handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
