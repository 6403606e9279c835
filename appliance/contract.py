"""The message contract of DESIGN.md: build, parse and validate `images` and `predictions` messages.

Parsing never trusts its input: every failure is a :class:`BadMessage` whose text is the reason
that goes to the dead-letter topic. What is checked beyond the fields' presence and types:

- `image_id` (the document's `_id` and the message key): 1 to 128 characters from letters, digits,
  `.`, `_`, `:` and `-`. A UUID is usual, but any such name is kept as given.
- `timestamp` and `inferred_at`: finite, not negative, and at most a day ahead of this host's clock
  (further ahead is almost always milliseconds sent as seconds).
- `confidence`: between 0 and 1. `label`: one of :data:`LABELS`, CIFAR-10's classes.
- Fields the contract does not name are ignored: not stored, not an error.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from appliance.imaging import ImageError, decode_rgb, sniff_content_type

SCHEMA = 1
# The labels a prediction may carry: CIFAR-10's classes, in the model's output order.
LABELS: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_CLOCK_AHEAD_S = 24 * 3600


class BadMessage(ValueError):
    """A message that cannot be processed; the text is the reason recorded in the DLQ."""


@dataclass(frozen=True)
class ImageMessage:
    image_id: str
    device_id: str
    timestamp: float
    image: bytes
    content_type: str
    ground_truth: str | None


@dataclass(frozen=True)
class PredictionMessage:
    image_id: str
    label: str
    confidence: float
    model: str
    inferred_at: float


def new_image_id() -> str:
    return str(uuid.uuid4())


def encode_image_message(
    image: bytes,
    device_id: str,
    ground_truth: str | None = None,
    image_id: str | None = None,
    timestamp: float | None = None,
) -> tuple[str, bytes]:
    """Return (key, value) for the `images` topic."""
    image_id = image_id or new_image_id()
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "image_id": image_id,
        "device_id": device_id,
        "timestamp": time.time() if timestamp is None else timestamp,
        "image": base64.b64encode(image).decode("ascii"),
    }
    if ground_truth is not None:
        body["ground_truth"] = ground_truth
    return image_id, json.dumps(body, separators=(",", ":")).encode()


def encode_prediction_message(
    image_id: str, label: str, confidence: float, model: str, inferred_at: float | None = None
) -> tuple[str, bytes]:
    body = {
        "schema": SCHEMA,
        "image_id": image_id,
        "label": label,
        "confidence": confidence,
        "model": model,
        "inferred_at": time.time() if inferred_at is None else inferred_at,
    }
    return image_id, json.dumps(body, separators=(",", ":")).encode()


def _load_object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise BadMessage("empty message (null value)")
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadMessage(f"not a JSON object: got {type(body).__name__}")
    schema = body.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise BadMessage(f"unsupported schema {schema!r}, expected {SCHEMA}")
    return body


def _field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], required: bool = True):
    if name not in body or body[name] is None:
        if required:
            raise BadMessage(f"missing field {name!r}")
        return None
    value = body[name]
    # bool is an int subclass; a timestamp of `true` is still wrong.
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise BadMessage(f"field {name!r} has the wrong type: {type(value).__name__}")
    if isinstance(value, str) and not value and required:
        raise BadMessage(f"field {name!r} is empty")
    return value


def _image_id(body: dict[str, Any]) -> str:
    image_id = _field(body, "image_id", str)
    if not IMAGE_ID.fullmatch(image_id):
        raise BadMessage(
            f"field 'image_id' must be 1-128 letters, digits, '.', '_', ':' or '-': "
            f"got {image_id[:60]!r}{'...' if len(image_id) > 60 else ''}"
        )
    return image_id


def _epoch(body: dict[str, Any], name: str, now: float, required: bool = True) -> float | None:
    value = _field(body, name, (int, float), required)
    if value is None:
        return None
    try:
        seconds = float(value)  # an integer past a float's range overflows here
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise BadMessage(f"field {name!r} must be seconds since the epoch: got {shown}")
    if seconds > now + MAX_CLOCK_AHEAD_S:
        raise BadMessage(
            f"field {name!r} is {value!r}, over a day ahead of this host's clock ({now:.0f}); "
            "milliseconds instead of seconds?"
        )
    return seconds


def parse_image_message(
    value: bytes | None,
    max_image_bytes: int,
    max_pixels: int,
    decode: bool = True,
    now: float | None = None,
) -> ImageMessage:
    """Validate an `images` message; with ``decode`` the image is fully decoded as a check."""
    body = _load_object(value)
    image_id = _image_id(body)
    timestamp = _epoch(body, "timestamp", time.time() if now is None else now, required=False)
    encoded = _field(body, "image", str)
    if len(encoded) > (max_image_bytes * 4) // 3 + 4:
        raise BadMessage(f"image too large: over {max_image_bytes} bytes")
    try:
        image = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadMessage(f"bad base64 in field 'image': {exc}") from None
    try:
        content_type = sniff_content_type(image)
        if decode:
            decode_rgb(image, max_pixels)
    except ImageError as exc:
        raise BadMessage(str(exc)) from None
    return ImageMessage(
        image_id=image_id,
        device_id=_field(body, "device_id", str, required=False) or "unknown",
        timestamp=timestamp or 0.0,
        image=image,
        content_type=content_type,
        ground_truth=_field(body, "ground_truth", str, required=False),
    )


def parse_prediction_message(value: bytes | None, now: float | None = None) -> PredictionMessage:
    body = _load_object(value)
    image_id = _image_id(body)
    label = _field(body, "label", str)
    if label not in LABELS:
        raise BadMessage(f"field 'label' is {label[:60]!r}, not a CIFAR-10 class")
    confidence = _field(body, "confidence", (int, float))
    if not 0.0 <= confidence <= 1.0:  # also false for NaN
        raise BadMessage(f"field 'confidence' must be between 0 and 1: got {confidence!r}")
    inferred_at = _epoch(body, "inferred_at", time.time() if now is None else now)
    assert inferred_at is not None  # required
    return PredictionMessage(
        image_id=image_id,
        label=label,
        confidence=float(confidence),
        model=_field(body, "model", str),
        inferred_at=inferred_at,
    )
