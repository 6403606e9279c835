"""The inference server as the server tests see it: ``appliance serve`` (Gunicorn) on loopback.

Imported by test_server.py with ``from .server_fixtures import *``; the ``model_path`` fixture
(a freshly initialised ResNet50) comes from conftest.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from appliance.server.process import ServerProcess

__all__ = ["Server", "encode_image", "ml_server", "start_server"]

# Small limits, so each one can be crossed by a small request.
TEST_ENV = {
    "MAX_BODY_BYTES": str(1024 * 1024),
    "MAX_IMAGE_BYTES": str(200_000),
    "MAX_IMAGE_PIXELS": str(64 * 64),
    "MAX_BATCH_IMAGES": "4",
    "LOG_LEVEL": "info",
}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match[1] == name:
            got = ",".join(sorted((match[2] or "").split(","))) if match[2] else ""
            if got == want:
                return float(match[3])
    return 0.0


def encode_image(
    fmt: str = "PNG", size: tuple[int, int] = (32, 32), seed: int = 0
) -> tuple[bytes, str]:
    """A random RGB image file in ``fmt`` and its base64 text."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    data = buffer.getvalue()
    return data, base64.b64encode(data).decode("ascii")


class Server(ServerProcess):
    """The server with JSON helpers for the tests."""

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)

    def post(self, path: str, payload: object = None, data: bytes | None = None):
        body = data if data is not None else json.dumps(payload).encode()
        return requests.post(
            self.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=60
        )


def start_server(
    model: Path | str, log_path: Path, *options: str, workers: int = 1, **env: str
) -> Server:
    """``appliance serve --model MODEL OPTIONS`` with the small test limits and ``env``; no wait."""
    return Server(model, log_path, workers=workers, env={**TEST_ENV, **env}, options=options).start(
        wait=False
    )


@pytest.fixture(scope="module")
def ml_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker (so concurrent requests meet in one batcher), a 50 ms batch wait, small limits.

    Its ``health_history`` records the /healthz answers from start until ready.
    """
    log_path = tmp_path_factory.mktemp("ml-server") / "server.log"
    options = ("--threads", "16", "--max-batch-size", "8", "--max-batch-wait-ms", "50")
    server = start_server(model_path, log_path, *options)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
