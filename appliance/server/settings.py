"""The server's settings: environment variables, checked before a worker loads anything."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.config import ConfigError, Settings
from appliance.model import GRAPH_SUFFIX
from appliance.server.backends import BACKENDS

INFERENCE_MODES = ("batched", "naive")
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
                values[name] = parse_setting(name.upper(), raw, kind)
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


def parse_setting(name: str, raw: str, kind: type) -> Any:
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
