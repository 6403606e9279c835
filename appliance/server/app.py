"""The Flask app: routes, JSON errors, and the model that loads in the background of each worker.

``create_app`` runs in a Gunicorn worker after the fork (no ``preload_app``), so TensorFlow and the
model never live in the master. The model loads in a thread so the worker answers ``/healthz`` with
503 while it loads, then 200.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from appliance.config import ConfigError, Settings
from appliance.imaging import ImageError, image_to_input
from appliance.model import GRAPH_SUFFIX
from appliance.server import backends, metrics
from appliance.server.backends import BACKENDS, model_call
from appliance.server.batcher import MicroBatcher

log = logging.getLogger(__name__)

INFERENCE_MODES = ("batched", "naive")
# BACKEND: what runs the batched model calls (appliance.server.backends).
_DEFAULTS = Settings()


@dataclass(frozen=True)
class ServerSettings:
    """The server's environment variables (``appliance serve`` options set the same ones)."""

    model_path: str = ""  # MODEL_PATH: the artifact, ``X``, ``X.keras``, ``X.npz`` or ``X.onnx``
    max_batch_size: int = 64  # MAX_BATCH_SIZE: images per model call
    max_batch_wait_ms: float = 5.0  # MAX_BATCH_WAIT_MS: how long a batch waits to fill up
    max_body_bytes: int = 32 * 1024 * 1024  # MAX_BODY_BYTES: whole request body
    max_image_bytes: int = _DEFAULTS.max_image_bytes  # MAX_IMAGE_BYTES: one decoded image file
    max_image_pixels: int = _DEFAULTS.max_image_pixels  # MAX_IMAGE_PIXELS: width x height
    max_batch_images: int = 256  # MAX_BATCH_IMAGES: images in one /predict/batch request
    inference_mode: str = "batched"  # INFERENCE_MODE: "batched", or "naive" (benchmark baseline)
    request_timeout_s: float = 60.0  # REQUEST_TIMEOUT_S: longest wait for the model
    backend: str = "tensorflow"  # BACKEND: tensorflow (the reference) or openvino
    # MODEL_THREADS: TensorFlow threads per worker; 0 leaves TensorFlow's default (all cores).
    # The Gunicorn config sets it to cores // workers, see there why.
    model_threads: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, kind in (
            ("model_path", str),
            ("max_batch_size", int),
            ("max_batch_wait_ms", float),
            ("max_body_bytes", int),
            ("max_image_bytes", int),
            ("max_image_pixels", int),
            ("max_batch_images", int),
            ("inference_mode", str),
            ("backend", str),
            ("request_timeout_s", float),
            ("model_threads", int),
        ):
            raw = env.get(name.upper(), "").strip()
            if raw:
                values[name] = _parse(name.upper(), raw, kind)
        settings = cls(**values)
        if settings.inference_mode not in INFERENCE_MODES:
            raise ConfigError(
                f"INFERENCE_MODE must be one of {', '.join(INFERENCE_MODES)}, "
                f"got {settings.inference_mode!r}"
            )
        if settings.backend not in BACKENDS:
            raise ConfigError(
                f"BACKEND must be one of {', '.join(BACKENDS)}, got {settings.backend!r}"
            )
        if settings.model_path.endswith(GRAPH_SUFFIX) and (
            settings.backend != "openvino" or settings.inference_mode != "batched"
        ):
            raise ConfigError(
                f"MODEL_PATH {settings.model_path} is an ONNX graph: it runs with "
                f"BACKEND=openvino and INFERENCE_MODE=batched only (got {settings.backend}, "
                f"{settings.inference_mode}); TensorFlow serves the X.keras or X.npz it came from"
            )
        return settings


def _parse(name: str, raw: str, kind: type) -> Any:
    if kind is str:
        return raw
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    # Zero is meaningful for these two (no waiting; TensorFlow's default); the rest must be > 0.
    if value < 0 or (value == 0 and name not in ("MAX_BATCH_WAIT_MS", "MODEL_THREADS")):
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


class ApiError(Exception):
    """A request the server refuses; becomes ``{"error": message[, "index": i]}``."""

    def __init__(self, status: int, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.index = index


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
                    observer=_observe_batch,
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
            _observe_batch(len(images), time.perf_counter() - started)
        return np.asarray(probs)


def _observe_batch(size: int, seconds: float) -> None:
    metrics.BATCH_SIZE.observe(size)
    metrics.MODEL_SECONDS.observe(seconds)
    metrics.IMAGES.inc(size)


# --- request parsing --------------------------------------------------------------------------


def _json_body() -> dict[str, Any]:
    data = request.get_data(cache=False)  # 413 here if over MAX_CONTENT_LENGTH
    try:
        body = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(body).__name__}")
    return body


def _b64_image(value: object, where: str, index: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, f"{where}: must be a base64 string, got {type(value).__name__}", index)
    try:
        # validate=True: stray characters are an error, not silently skipped.
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
        raise ApiError(400, f"{where}: invalid base64: {exc}", index) from None


def _to_input(
    data: bytes, where: str, settings: ServerSettings, size: int, index: int | None = None
) -> np.ndarray:
    if len(data) > settings.max_image_bytes:
        raise ApiError(
            422,
            f"{where}: image too large: {len(data)} bytes, limit is {settings.max_image_bytes}",
            index,
        )
    try:
        return image_to_input(data, size, settings.max_image_pixels)
    except ImageError as exc:
        raise ApiError(422, f"{where}: {exc}", index) from None


def _ground_truths(value: object, count: int) -> list[str | None]:
    """The optional true classes sent with a batch: one class name or null per image."""
    if value is None:
        return [None] * count
    if not isinstance(value, list) or len(value) != count:
        raise ApiError(400, f"field 'ground_truth' must be a list of {count} class names or nulls")
    for i, truth in enumerate(value):
        if truth is not None and not isinstance(truth, str):
            raise ApiError(400, f"field 'ground_truth[{i}]' must be a class name or null", i)
    return value


def _count_ground_truth(model_id: str, labels: list[str], truths: list[str | None]) -> None:
    checked = [(label, truth) for label, truth in zip(labels, truths, strict=True) if truth]
    if checked:
        metrics.LABELS_CHECKED.labels(model=model_id).inc(len(checked))
        metrics.LABELS_MATCHING.labels(model=model_id).inc(sum(a == b for a, b in checked))


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


# --- the app ----------------------------------------------------------------------------------


def create_app(settings: ServerSettings | None = None, *, load_model: bool = True) -> Flask:
    """The Flask app; starts loading the model in the background unless ``load_model`` is False."""
    settings = settings or ServerSettings.from_env()
    app = Flask("appliance.server")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    inference = Inference(settings)
    app.extensions["appliance.inference"] = inference

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        # The route pattern, not the path: unknown paths must not create new label values.
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.REQUESTS.labels(endpoint, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            metrics.REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        payload: dict[str, Any] = {"error": exc.message}
        if exc.index is not None:
            payload["index"] = exc.index
        return _json(payload, exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404:
            message = f"not found: {request.path}"
        elif status == 405:
            allowed = ", ".join(getattr(exc, "valid_methods", None) or [])
            message = f"method {request.method} not allowed on {request.path}; allowed: {allowed}"
        elif status == 413:
            message = f"request body too large: limit is {settings.max_body_bytes} bytes"
        else:
            message = exc.description or exc.name
        response = _json({"error": message}, status)
        if status == 405:
            response.headers["Allow"] = allowed
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    @app.get("/healthz")
    def healthz() -> Response:
        if inference.state == "ok":
            return _json({"status": "ok", "model": inference.model_id})
        if inference.state == "error":
            return _json({"status": "error", "error": inference.error}, 503)
        return _json({"status": "loading"}, 503)

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.post("/predict")
    def predict() -> Response:
        body = _json_body()
        if "image" not in body:
            raise ApiError(400, "missing field 'image' (a base64 PNG or JPEG)")
        data = _b64_image(body["image"], "image")
        inference.require_ready()
        image = _to_input(data, "image", settings, inference.model.input_size)
        truth = body.get("ground_truth")
        if truth is not None and not isinstance(truth, str):
            raise ApiError(400, "field 'ground_truth' must be a class name or null")
        ((label, confidence),) = inference.label([image])
        _count_ground_truth(inference.model_id, [label], [truth])
        return _json({"label": label, "confidence": confidence, "model": inference.model_id})

    @app.post("/predict/batch")
    def predict_batch() -> Response:
        body = _json_body()
        if "images" not in body:
            raise ApiError(400, "missing field 'images' (a list of base64 PNG or JPEG)")
        images = body["images"]
        if not isinstance(images, list):
            raise ApiError(400, f"field 'images' must be a list, got {type(images).__name__}")
        if not images:
            raise ApiError(400, "field 'images' is empty")
        if len(images) > settings.max_batch_images:
            raise ApiError(
                413, f"too many images: {len(images)}, limit is {settings.max_batch_images}"
            )
        files = [_b64_image(value, f"images[{i}]", i) for i, value in enumerate(images)]
        truths = _ground_truths(body.get("ground_truth"), len(images))
        inference.require_ready()
        size = inference.model.input_size
        decoded = [
            _to_input(data, f"images[{i}]", settings, size, i) for i, data in enumerate(files)
        ]
        model_id = inference.model_id
        labels = inference.label(decoded)
        _count_ground_truth(model_id, [label for label, _ in labels], truths)
        predictions = [
            {"label": label, "confidence": confidence, "model": model_id}
            for label, confidence in labels
        ]
        return _json({"predictions": predictions, "model": model_id})

    if load_model:
        inference.start_loading()
    return app
