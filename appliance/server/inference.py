"""The worker's model: loaded in a background thread, then called through the micro-batcher."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from appliance.config import ConfigError
from appliance.server import backends, metrics
from appliance.server.backends import model_call
from appliance.server.batcher import MicroBatcher
from appliance.server.errors import ApiError
from appliance.server.settings import ServerSettings

log = logging.getLogger(__name__)


class Inference:
    """The worker's model: loads in the background, then labels images through the batcher."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.state = "loading"  # -> "ok" or "error"
        self.error: str | None = None
        self.model: Any = None  # appliance.model.LoadedModel once loaded
        self.model_id: str | None = None
        self.batcher: MicroBatcher | None = None
        self._naive_lock = threading.Lock()

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        path = self.settings.model_path
        started = time.monotonic()
        try:
            if not path:
                raise ConfigError("MODEL_PATH is not set: give the model artifact's path")
            # TensorFlow (if the artifact needs it) is only ever imported in a worker.
            loaded = backends.load(path, self.settings.model_threads)
            if self.settings.inference_mode == "batched":
                call = model_call(self.settings.backend, loaded, self.settings.model_threads)
                # Trace and run once now, so the first request does not pay for it.
                size = loaded.input_size
                for n in sorted({1, self.settings.max_batch_size}):
                    call(np.zeros((n, size, size, 3), dtype=np.uint8))
                self.batcher = MicroBatcher(
                    call,
                    max_batch_size=self.settings.max_batch_size,
                    max_wait_s=self.settings.max_batch_wait_ms / 1000.0,
                    observer=observe_batch,
                ).start()
            else:
                # Builds Keras's predict function now rather than in the first request.
                loaded.model.predict(
                    np.zeros((1, *loaded.model.input_shape[1:]), np.uint8), verbose=0
                )
        except Exception as exc:
            self.error = f"model failed to load from {path or '(MODEL_PATH unset)'}: {exc}"
            self.state = "error"
            log.error("%s", self.error, exc_info=not isinstance(exc, ConfigError))
            return
        self.model, self.model_id = loaded, loaded.model_id
        self.state = "ok"
        metrics.WORKERS_READY.set(1)
        log.info(
            "model %s loaded from %s in %.1fs (pid %d, %s inference on %s, max batch %d, "
            "wait %g ms)",
            loaded.model_id,
            path,
            time.monotonic() - started,
            os.getpid(),
            self.settings.inference_mode,
            self.settings.backend,
            self.settings.max_batch_size,
            self.settings.max_batch_wait_ms,
        )

    def require_ready(self) -> None:
        if self.state == "loading":
            raise ApiError(503, "model is still loading; retry shortly")
        if self.state == "error":
            raise ApiError(503, self.error or "model failed to load")

    def label(self, images: list[np.ndarray]) -> list[tuple[str, float]]:
        """Labels for size x size x 3 uint8 images, in order."""
        if self.batcher is not None:
            probs = self._wait(self.batcher.submit_many(images))
        else:
            probs = self._naive(images)
        return self.model.labels(probs)

    def _wait(self, futures: list[Future[np.ndarray]]) -> np.ndarray:
        deadline = time.monotonic() + self.settings.request_timeout_s
        rows = []
        try:
            for fut in futures:
                rows.append(fut.result(timeout=max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            for fut in futures:
                fut.cancel()  # those not started yet are skipped by the batcher
            raise ApiError(
                503, f"inference timed out after {self.settings.request_timeout_s:g}s"
            ) from None
        except Exception as exc:
            log.error("inference failed: %s", exc)
            raise ApiError(500, f"inference failed: {exc}") from None
        return np.stack(rows)

    def _naive(self, images: list[np.ndarray]) -> np.ndarray:
        # The baseline the benchmark compares against: Keras predict() per request, one at a time
        # (predict() is not meant to be called from several threads at once).
        with self._naive_lock:
            started = time.perf_counter()
            probs = self.model.model.predict(np.stack(images), verbose=0)
            observe_batch(len(images), time.perf_counter() - started)
        return np.asarray(probs)


def observe_batch(size: int, seconds: float) -> None:
    metrics.BATCH_SIZE.observe(size)
    metrics.MODEL_SECONDS.observe(seconds)
    metrics.IMAGES.inc(size)
