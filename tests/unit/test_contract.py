import base64
import io
import json

import pytest
from PIL import Image

from appliance.contract import (
    BadMessage,
    encode_image_message,
    encode_prediction_message,
    parse_image_message,
    parse_prediction_message,
)

LIMIT_BYTES = 1 << 20
LIMIT_PIXELS = 1 << 20


def png(width: int = 8, height: int = 8, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def parse(value: bytes):
    return parse_image_message(value, LIMIT_BYTES, LIMIT_PIXELS)


def test_image_message_round_trip_keeps_every_field():
    image = png()
    key, value = encode_image_message(image, "camera-01", "cat", timestamp=12.5)
    msg = parse(value)
    assert msg.image_id == key
    assert (msg.device_id, msg.timestamp, msg.ground_truth) == ("camera-01", 12.5, "cat")
    assert msg.image == image
    assert msg.content_type == "image/png"


def test_ground_truth_is_optional():
    _, value = encode_image_message(png(), "camera-01")
    assert parse(value).ground_truth is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"image": "aGk="}).encode(), "missing field 'image_id'"),
        (json.dumps({"image_id": "x"}).encode(), "missing field 'image'"),
        (json.dumps({"image_id": 7, "image": "aGk="}).encode(), "'image_id' has the wrong type"),
        (json.dumps({"image_id": "x", "image": "***"}).encode(), "bad base64"),
        (json.dumps({"image_id": "x", "image": "aGVsbG8="}).encode(), "not an image"),
        (json.dumps({"schema": 2, "image_id": "x", "image": "aGk="}).encode(), "schema"),
    ],
)
def test_bad_image_messages_name_the_problem(value, reason):
    with pytest.raises(BadMessage, match=reason):
        parse(value)


def test_pixel_bomb_is_refused_before_decoding():
    bomb = png(10_000, 10_000, mode="1")
    assert len(bomb) < 100_000  # small on the wire, 100 megapixels decoded
    _, value = encode_image_message(bomb, "camera-01")
    with pytest.raises(BadMessage, match="too large: 10000x10000"):
        parse(value)


def test_truncated_png_is_not_decodable():
    _, value = encode_image_message(png(32, 32)[:40], "camera-01")
    with pytest.raises(BadMessage, match="not a decodable image"):
        parse(value)


def test_oversized_payload_is_refused_without_decoding():
    value = json.dumps({"image_id": "x", "image": base64.b64encode(b"\0" * 2048).decode()})
    with pytest.raises(BadMessage, match="image too large"):
        parse_image_message(value.encode(), 1024, LIMIT_PIXELS)


def test_prediction_round_trip_and_errors():
    _, value = encode_prediction_message("id-1", "dog", 0.75, "m1", 3.0)
    pred = parse_prediction_message(value)
    assert (pred.image_id, pred.label, pred.confidence, pred.model, pred.inferred_at) == (
        "id-1",
        "dog",
        0.75,
        "m1",
        3.0,
    )
    with pytest.raises(BadMessage, match="missing field 'label'"):
        parse_prediction_message(json.dumps({"image_id": "x"}).encode())
    with pytest.raises(BadMessage, match="'confidence' has the wrong type"):
        parse_prediction_message(
            json.dumps(
                {
                    "image_id": "x",
                    "label": "cat",
                    "confidence": True,
                    "model": "m",
                    "inferred_at": 1,
                }
            ).encode()
        )
