"""The Flask app: routes and JSON errors over the worker's model (``inference.Inference``).

``create_app`` runs in a Gunicorn worker after the fork (no ``preload_app``), so TensorFlow and the
model never live in the master. The model loads in a thread so the worker answers ``/healthz`` with
503 while it loads, then 200.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from appliance.server import metrics
from appliance.server.errors import ApiError
from appliance.server.inference import Inference
from appliance.server.request_parsing import b64_image, ground_truths, json_body, to_input
from appliance.server.settings import ServerSettings

log = logging.getLogger(__name__)


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
        body = json_body()
        if "image" not in body:
            raise ApiError(400, "missing field 'image' (a base64 PNG or JPEG)")
        data = b64_image(body["image"], "image")
        inference.require_ready()
        image = to_input(data, "image", settings, inference.model.input_size)
        truth = body.get("ground_truth")
        if truth is not None and not isinstance(truth, str):
            raise ApiError(400, "field 'ground_truth' must be a class name or null")
        ((label, confidence),) = inference.label([image])
        _count_ground_truth(inference.model_id, [label], [truth])
        return _json({"label": label, "confidence": confidence, "model": inference.model_id})

    @app.post("/predict/batch")
    def predict_batch() -> Response:
        body = json_body()
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
        files = [b64_image(value, f"images[{i}]", i) for i, value in enumerate(images)]
        truths = ground_truths(body.get("ground_truth"), len(images))
        inference.require_ready()
        size = inference.model.input_size
        decoded = [
            to_input(data, f"images[{i}]", settings, size, i) for i, data in enumerate(files)
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
