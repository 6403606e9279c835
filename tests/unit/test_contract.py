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


NOW = 1_764_300_000.0


def image_body(**fields) -> bytes:
    body = {"schema": 1, "image_id": "img-1", "image": base64.b64encode(png()).decode(), **fields}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"image_id": ""}, "'image_id' is empty"),
        ({"image_id": "a b"}, "'image_id' must be 1-128 letters"),
        ({"image_id": "../../etc"}, "'image_id' must be 1-128 letters"),
        ({"image_id": "$where"}, "'image_id' must be 1-128 letters"),
        ({"image_id": "x" * 129}, r"got 'x{60}'\.\.\."),
        ({"timestamp": -1.0}, "'timestamp' must be seconds since the epoch: got -1.0"),
        ({"timestamp": float("nan")}, "'timestamp' must be seconds since the epoch: got nan"),
        ({"timestamp": float("inf")}, "'timestamp' must be seconds since the epoch: got inf"),
        ({"timestamp": NOW * 1000}, "over a day ahead .* milliseconds instead of seconds"),
        ({"timestamp": 10**400}, r"must be seconds since the epoch: got 1000000000\d+\.\.\."),
    ],
)
def test_image_ids_and_timestamps_outside_the_contract_name_the_problem(fields, reason):
    with pytest.raises(BadMessage, match=reason):
        parse_image_message(image_body(**fields), LIMIT_BYTES, LIMIT_PIXELS, now=NOW)


def test_what_the_contract_allows_is_kept_as_given():
    for image_id in ("7f6c2a3e-0b1d-4c9a-8e2f-5a6b7c8d9e0f", "img-0001", "cam.3:shot_7", "x" * 128):
        assert parse_image_message(
            image_body(image_id=image_id), LIMIT_BYTES, LIMIT_PIXELS, now=NOW
        ).image_id == image_id  # fmt: skip
    # A camera clock a little ahead, and the epoch itself, are fine.
    for timestamp in (NOW + 3600, 0.0):
        msg = parse_image_message(
            image_body(timestamp=timestamp), LIMIT_BYTES, LIMIT_PIXELS, now=NOW
        )
        assert msg.timestamp == timestamp
    # Fields the contract does not name are ignored, not an error.
    msg = parse_image_message(
        image_body(timestamp=NOW, colour="red", schema_note={"a": 1}), LIMIT_BYTES, LIMIT_PIXELS
    )
    assert not hasattr(msg, "colour")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"label": "sofa"}, "'label' is 'sofa', not a CIFAR-10 class"),
        ({"label": "Cat"}, "'label' is 'Cat', not a CIFAR-10 class"),
        ({"confidence": 1.5}, "'confidence' must be between 0 and 1: got 1.5"),
        ({"confidence": float("nan")}, "'confidence' must be between 0 and 1: got nan"),
        ({"inferred_at": NOW * 1000}, "'inferred_at' is .* over a day ahead"),
        ({"image_id": "id 1"}, "'image_id' must be"),
    ],
)
def test_predictions_outside_the_contract_name_the_problem(fields, reason):
    body = {"schema": 1, "image_id": "id-1", "label": "cat", "confidence": 0.5, "model": "m",
            "inferred_at": NOW, **fields}  # fmt: skip
    with pytest.raises(BadMessage, match=reason):
        parse_prediction_message(json.dumps(body).encode(), now=NOW)
