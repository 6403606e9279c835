"""Micro-batching: concurrent requests in one worker share one model call.

Request threads :meth:`MicroBatcher.submit` single inputs and wait on the returned futures. One
batcher thread takes the first waiting input, gathers more until ``max_batch_size`` inputs or
``max_wait_s`` after that first one, stacks them and calls the model once. A model call costs
nearly the same for 1 image as for dozens, so this is where the server's throughput comes from.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

log = logging.getLogger(__name__)

BatchFn = Callable[[np.ndarray], np.ndarray]
# Called after each model call with (batch size, seconds the call took); used for metrics.
BatchObserver = Callable[[int, float], None]


class BatcherClosed(RuntimeError):
    """The batcher was stopped before this input got its turn."""


_STOP = object()


class MicroBatcher:
    def __init__(
        self,
        fn: BatchFn,
        max_batch_size: int,
        max_wait_s: float,
        observer: BatchObserver | None = None,
        name: str = "micro-batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._observer = observer
        # SimpleQueue: lock-free put from many request threads, implemented in C.
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> MicroBatcher:
        self._thread.start()
        return self

    def submit(self, item: np.ndarray) -> Future[np.ndarray]:
        """Queue one input (one row of the batch); the future gets its row of the output."""
        if self._closed:
            raise BatcherClosed("the batcher is stopped")
        future: Future[np.ndarray] = Future()
        self._queue.put((item, future))
        return future

    def submit_many(self, items: Sequence[np.ndarray]) -> list[Future[np.ndarray]]:
        """Queue several inputs; they are batched (and split at max_batch_size) like any other."""
        return [self.submit(item) for item in items]

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop after the inputs already queued; later submits raise :class:`BatcherClosed`."""
        self._closed = True
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _gather(self, first: tuple[np.ndarray, Future[np.ndarray]]) -> tuple[list, bool]:
        """The first input plus whatever arrives before the batch is full or the wait is over."""
        batch = [first]
        stop = False
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                # Past the deadline still take what is already queued: it costs no waiting.
                entry = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if entry is _STOP:
                stop = True
                break
            batch.append(entry)
        return batch, stop

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._gather(first)  # type: ignore[arg-type]
            self._run(batch)
        self._fail_pending()

    def _run(self, batch: list[tuple[np.ndarray, Future[np.ndarray]]]) -> None:
        # A waiter that gave up cancelled its future: drop that input instead of computing it.
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        try:
            outputs = np.asarray(self.fn(np.stack([item for item, _ in live])))
            if len(outputs) != len(live):
                raise RuntimeError(f"model returned {len(outputs)} rows for {len(live)} inputs")
        except Exception as exc:  # every waiter must hear about the failure, not just one
            log.exception("model call on a batch of %d failed", len(live))
            for _, fut in live:
                fut.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        for (_, fut), row in zip(live, outputs, strict=True):
            fut.set_result(row)
        if self._observer is not None:
            try:
                self._observer(len(live), elapsed)
            except Exception:
                log.exception("batch observer failed")

    def _fail_pending(self) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is not _STOP:
                _, fut = entry  # type: ignore[misc]
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(BatcherClosed("the batcher stopped before this input ran"))
