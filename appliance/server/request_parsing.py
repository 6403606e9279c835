"""A request's body to model input: JSON, base64, image bytes, true classes; ApiError otherwise."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
from flask import request

from appliance.imaging import ImageError, image_to_input
from appliance.server.errors import ApiError
from appliance.server.settings import ServerSettings


def json_body() -> dict[str, Any]:
    data = request.get_data(cache=False)  # 413 here if over MAX_CONTENT_LENGTH
    try:
        body = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(body).__name__}")
    return body


def b64_image(value: object, where: str, index: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, f"{where}: must be a base64 string, got {type(value).__name__}", index)
    try:
        # validate=True: stray characters are an error, not silently skipped.
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
        raise ApiError(400, f"{where}: invalid base64: {exc}", index) from None


def to_input(
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


def ground_truths(value: object, count: int) -> list[str | None]:
    """The optional true classes sent with a batch: one class name or null per image."""
    if value is None:
        return [None] * count
    if not isinstance(value, list) or len(value) != count:
        raise ApiError(400, f"field 'ground_truth' must be a list of {count} class names or nulls")
    for i, truth in enumerate(value):
        if truth is not None and not isinstance(truth, str):
            raise ApiError(400, f"field 'ground_truth[{i}]' must be a class name or null", i)
    return value
