"""Prometheus metrics, correct with several Gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the Gunicorn config does it before forking), every worker
writes its values to files in that directory and ``/metrics`` merges them, so whichever worker
answers the scrape reports the totals of all of them. Without it (a plain Flask test client) the
default in-process registry is used.

This module must be imported only after the variable is set: prometheus_client picks its value
storage at import time.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets from 1 ms to 30 s: single images take milliseconds, big batches seconds.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Powers of two: a batch of exactly N lands in the bucket le=N.
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "appliance_http_requests_total",
    "HTTP requests answered, by endpoint and status code.",
    ("endpoint", "code"),
)
REQUEST_SECONDS = Histogram(
    "appliance_http_request_duration_seconds",
    "Time from request start to response, by endpoint.",
    ("endpoint",),
    buckets=_LATENCY_BUCKETS,
)
IMAGES = Counter("appliance_images_predicted_total", "Images labelled by the model.")
# The model's quality as served: a client that knows an image's true class (the cameras do, for
# CIFAR-10) sends it along, and each model id's ratio shows a regression when the model changes.
LABELS_CHECKED = Counter(
    "appliance_labels_with_ground_truth_total",
    "Labels given to images that came with their true class, by model id.",
    ("model",),
)
LABELS_MATCHING = Counter(
    "appliance_labels_matching_ground_truth_total",
    "Of those, the labels equal to the true class, by model id.",
    ("model",),
)
BATCH_SIZE = Histogram(
    "appliance_model_batch_size",
    "Images per model call (the micro-batcher's batch sizes).",
    buckets=_BATCH_BUCKETS,
)
MODEL_SECONDS = Histogram(
    "appliance_model_call_duration_seconds",
    "Duration of one model call, whatever its batch size.",
    buckets=_LATENCY_BUCKETS,
)

# livesum: the sum over live workers, so any worker's /metrics tells how many can serve (each
# worker answers /healthz only for itself).
WORKERS_READY = Gauge(
    "appliance_model_ready_workers",
    "Workers whose model is loaded and serving.",
    multiprocess_mode="livesum",
)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of all workers' metrics, and its content type."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
