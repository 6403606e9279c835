"""Bad messages go to the dead-letter topic once each, with a reason; the good ones all land."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer
from PIL import Image

from appliance.contract import encode_image_message
from appliance.pipeline import kafkaio
from appliance.pipeline.consumer_inference import InferenceClient, Item, label_batch

from .harness import wait_for

pytestmark = pytest.mark.integration


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_messages() -> dict[bytes, tuple[bytes, str]]:
    """key -> (value, a phrase its DLQ reason must contain)."""
    _, bomb = encode_image_message(png(10_000, 10_000, "1"), "camera-x", image_id="bad-bomb")
    return {
        b"bad-json": (b'{"image_id": "bad-json", "image": ', "not JSON"),
        b"bad-no-id": (
            json.dumps({"schema": 1, "image": base64.b64encode(png(8, 8)).decode()}).encode(),
            "missing field 'image_id'",
        ),
        b"bad-b64": (
            json.dumps({"image_id": "bad-b64", "image": "%%%not base64%%%"}).encode(),
            "bad base64",
        ),
        b"bad-not-image": (
            json.dumps(
                {
                    "image_id": "bad-not-image",
                    "image": base64.b64encode(b"GIF89a, not ours").decode(),
                }
            ).encode(),
            "not an image",
        ),
        b"bad-bomb": (bomb, "too large: 10000x10000"),
        b"bad-id": (fields(image_id="bad id/1"), "'image_id' must be 1-128 letters"),
        b"bad-nan-time": (fields(timestamp=float("nan")), "'timestamp' must be seconds"),
        b"bad-ms-time": (fields(timestamp=time.time() * 1000), "milliseconds instead of seconds"),
    }


def fields(**overrides) -> bytes:
    """A valid image message, but for ``overrides``."""
    _, value = encode_image_message(png(8, 8), "camera-x", image_id="bad-fields")
    return json.dumps({**json.loads(value), **overrides}).encode()


def read_topic(settings, topic: str, expected: int, timeout: float = 30.0) -> list:
    consumer = KafkaConsumer(
        topic,
        **settings.kafka_options(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    records, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        records.extend(consumer)  # stops after 3 s without a record
        if len(records) >= expected:
            break
    consumer.close()
    return records


def test_bad_messages_are_dead_lettered_once(
    served_settings, consumers, collection, cifar_test_samples
):
    settings = served_settings
    kafkaio.ensure_topics(settings)
    db = consumers("consume-db", settings)
    inference = consumers("consume-inference", settings)
    bad = bad_messages()
    good = [encode_image_message(s.image, "camera-ok", s.label) for s in cifar_test_samples[:60]]
    producer = KafkaProducer(**settings.kafka_options(), acks="all")
    bad_items = list(bad.items())
    for n, (key, value) in enumerate(good):
        producer.send(settings.topic_images, key=key.encode(), value=value)
        if n % 7 == 3 and bad_items:
            bad_key, (bad_value, _) = bad_items.pop()
            producer.send(settings.topic_images, key=bad_key, value=bad_value)
    producer.flush()
    producer.close()
    assert not bad_items, "every bad message was sent"

    good_ids = [key for key, _ in good]
    wait_for(
        lambda: collection.count_documents({"prediction": {"$exists": True}}) >= len(good),
        180,
        "every good image labelled",
        on_timeout=lambda: db.log() + inference.log(),
    )
    time.sleep(3)  # a second copy of any dead letter would have arrived by now
    dead = read_topic(settings, settings.topic_dlq, len(bad))
    by_key = {}
    for record in dead:
        assert record.key not in by_key, f"{record.key} dead-lettered twice"
        by_key[record.key] = record
    assert set(by_key) == set(bad)
    for key, (value, reason) in bad.items():
        record = by_key[key]
        headers = dict(record.headers)
        assert record.value == value, "the original bytes are kept"
        assert reason in headers[kafkaio.DLQ_REASON].decode(), headers
        assert headers[kafkaio.DLQ_SOURCE_TOPIC].decode() == settings.topic_images
        assert headers[kafkaio.DLQ_CONSUMER] == b"consume-db"
    assert collection.count_documents({}) == len(good)
    assert collection.count_documents({"_id": {"$in": good_ids}}) == len(good)
    assert collection.count_documents({"_id": {"$regex": "^bad-"}}) == 0
    assert db.alive and inference.alive


def test_images_the_server_rejects_are_split_out(server_factory, cifar_test_samples):
    """The server's own limits are the last word: a 4xx naming one image drops just that one."""
    server = server_factory({"MAX_IMAGE_PIXELS": "4096"}).start()  # 64x64 is the most it takes
    client = InferenceClient(server.url)
    images = [s.image for s in cifar_test_samples[:7]]
    images[2] = png(100, 100)
    images[5] = png(80, 80)
    items = [
        Item(f"record-{i}", f"id-{i}", base64.b64encode(b).decode())  # type: ignore[arg-type]
        for i, b in enumerate(images)
    ]
    labelled, rejected = label_batch(client, items)
    assert sorted(r for r, _ in rejected) == ["record-2", "record-5"]
    assert all("rejected by inference server (HTTP 4" in reason for _, reason in rejected)
    assert sorted(item.image_id for item in labelled) == [f"id-{i}" for i in (0, 1, 3, 4, 6)]


def test_unreachable_server_is_retryable_not_a_rejection():
    from appliance.pipeline.consumer_inference import ServerUnavailable

    client = InferenceClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(ServerUnavailable):
        client.predict(["aGk="])
