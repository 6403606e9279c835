"""The micro-batcher with a plain numpy function as the model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from appliance.server.batcher import BatcherClosed, MicroBatcher


class Recorder:
    """A stand-in model: doubles its input and records each batch size it was called with."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        return batch * 2


def items(n: int) -> list[np.ndarray]:
    return [np.full((2, 2), i, dtype=np.int64) for i in range(n)]


def test_queued_inputs_go_in_one_call_and_results_come_back_in_order() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=16, max_wait_s=0.0)
    futures = batcher.submit_many(items(10))  # all queued before the thread starts
    batcher.start()
    try:
        for i, fut in enumerate(futures):
            np.testing.assert_array_equal(fut.result(timeout=5), np.full((2, 2), 2 * i))
        assert model.sizes == [10]
    finally:
        batcher.close()


def test_batches_are_split_at_max_batch_size() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.0)
    futures = batcher.submit_many(items(10))
    batcher.start()
    try:
        assert [int(f.result(timeout=5)[0, 0]) for f in futures] == [2 * i for i in range(10)]
        assert model.sizes == [4, 4, 2]
    finally:
        batcher.close()


def test_concurrent_submitters_are_grouped_within_the_wait() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=64, max_wait_s=0.5).start()
    barrier = threading.Barrier(8)
    results: list[int] = []

    def client(i: int) -> None:
        barrier.wait()
        results.append(int(batcher.submit(np.full((2, 2), i)).result(timeout=5)[0, 0]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(results) == [2 * i for i in range(8)]
        # All eight arrive well within the 0.5 s wait: one call, or two if a thread was slow.
        assert len(model.sizes) <= 2 and max(model.sizes) >= 4
    finally:
        batcher.close()


def test_a_lone_input_waits_at_most_max_wait() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=64, max_wait_s=0.2).start()
    try:
        started = time.monotonic()
        batcher.submit(np.zeros((2, 2))).result(timeout=5)
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 2.0, elapsed
        assert model.sizes == [1]
    finally:
        batcher.close()


def test_a_full_batch_does_not_wait() -> None:
    batcher = MicroBatcher(Recorder(), max_batch_size=3, max_wait_s=30.0)
    futures = batcher.submit_many(items(3))
    started = time.monotonic()
    batcher.start()
    try:
        for fut in futures:
            fut.result(timeout=5)
        assert time.monotonic() - started < 5.0
    finally:
        batcher.close()


def test_a_model_exception_reaches_every_waiter_of_that_batch() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise ValueError("model exploded")

    batcher = MicroBatcher(broken, max_batch_size=8, max_wait_s=0.0)
    futures = batcher.submit_many(items(5))
    batcher.start()
    try:
        for fut in futures:
            with pytest.raises(ValueError, match="model exploded"):
                fut.result(timeout=5)
        # The thread survives a failed batch and serves the next one.
        batcher.fn = Recorder()
        assert int(batcher.submit(np.ones((2, 2))).result(timeout=5)[0, 0]) == 2
    finally:
        batcher.close()


def test_a_wrong_number_of_output_rows_fails_the_batch() -> None:
    batcher = MicroBatcher(lambda batch: batch[:1], max_batch_size=8, max_wait_s=0.0)
    futures = batcher.submit_many(items(3))
    batcher.start()
    try:
        for fut in futures:
            with pytest.raises(RuntimeError, match="1 rows for 3 inputs"):
                fut.result(timeout=5)
    finally:
        batcher.close()


def test_cancelled_inputs_are_not_computed() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.0)
    futures = batcher.submit_many(items(4))
    assert futures[1].cancel()
    batcher.start()
    try:
        assert int(futures[3].result(timeout=5)[0, 0]) == 6
        with pytest.raises(CancelledError):
            futures[1].result()
        assert model.sizes == [3]
    finally:
        batcher.close()


def test_observer_gets_batch_size_and_duration() -> None:
    seen: list[tuple[int, float]] = []
    batcher = MicroBatcher(Recorder(), 8, 0.0, observer=lambda n, s: seen.append((n, s)))
    futures = batcher.submit_many(items(3))
    batcher.start()
    try:
        for fut in futures:
            fut.result(timeout=5)
        assert len(seen) == 1 and seen[0][0] == 3 and seen[0][1] >= 0
    finally:
        batcher.close()


def test_after_close_submit_is_refused() -> None:
    batcher = MicroBatcher(Recorder(), 8, 0.0).start()
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(np.zeros((2, 2)))


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(Recorder(), 0, 0.0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(Recorder(), 1, -1.0)
