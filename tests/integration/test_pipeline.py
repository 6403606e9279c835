"""The whole pipeline: producer -> Kafka -> both consumers -> server -> MongoDB."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
import requests

from appliance.model import CIFAR10_CLASSES
from appliance.pipeline import producer

from .harness import wait_for
from .server_fixtures import metric

pytestmark = pytest.mark.integration
DOCUMENT_FIELDS = {"_id", "device_id", "timestamp", "image", "content_type", "ground_truth",
                   "stored_at", "prediction", "labelled_at"}  # fmt: skip


def labels_by_content(samples) -> dict[bytes, str]:
    table = {hashlib.sha256(s.image).digest(): s.label for s in samples}
    assert len(table) == len(samples), "test data must not repeat an image"
    return table


def labelled(collection) -> int:
    return collection.count_documents({"prediction": {"$exists": True}})


def assert_complete(collection, samples, expected: int) -> None:
    truth = labels_by_content(samples)
    docs = list(collection.find())
    assert len(docs) == expected
    assert len({d["_id"] for d in docs}) == expected
    for doc in docs:
        assert set(doc) == DOCUMENT_FIELDS, doc["_id"]
        assert doc["ground_truth"] == truth[hashlib.sha256(doc["image"]).digest()]
        assert doc["content_type"] == "image/jpeg"
        assert doc["prediction"]["label"] in CIFAR10_CLASSES
        assert 0.0 <= doc["prediction"]["confidence"] <= 1.0
        assert doc["prediction"]["model"].startswith("resnet50-")
        assert doc["stored_at"] > 0 and doc["labelled_at"] > 0


def test_thousand_images_end_to_end(served_settings, consumers, collection, cifar_test_samples):
    samples = cifar_test_samples[::10]  # 1,000 images, 100 of each class
    assert len(samples) == 1000
    db = consumers("consume-db", served_settings)
    inference = consumers("consume-inference", served_settings)
    before = requests.get(f"{served_settings.inference_url}/metrics", timeout=10).text

    counts = producer.produce(
        served_settings, samples, devices=4, rate=0, count=1000, progress=False
    )
    assert (counts.sent, counts.acknowledged, counts.failed) == (1000, 1000, 0)

    wait_for(
        lambda: labelled(collection) >= 1000,
        240,
        "1,000 labelled documents",
        on_timeout=lambda: db.log() + inference.log(),
    )
    time.sleep(2)  # anything extra would show up now
    assert_complete(collection, samples, 1000)
    devices = set(collection.distinct("device_id"))
    assert devices == {f"{served_settings.device_id}-{i:02d}" for i in range(4)}
    assert db.alive and inference.alive
    # The inference consumer sent the cameras' ground truth along: the server counted every label,
    # and its matches agree with the documents' (a redelivered batch would count twice, no less).
    after = requests.get(f"{served_settings.inference_url}/metrics", timeout=10).text
    docs = list(collection.find({}, {"ground_truth": 1, "prediction": 1}))
    model_id = docs[0]["prediction"]["model"]
    matching = sum(d["ground_truth"] == d["prediction"]["label"] for d in docs)
    checked, served_matching = (
        metric(after, name, model=model_id) - metric(before, name, model=model_id)
        for name in (
            "appliance_labels_with_ground_truth_total",
            "appliance_labels_matching_ground_truth_total",
        )
    )
    assert checked >= 1000
    assert matching <= served_matching <= matching + (checked - 1000)


def test_server_down_for_20_seconds_mid_run(
    settings, server_factory, consumers, collection, cifar_test_samples
):
    from dataclasses import replace

    server = server_factory().start()
    settings = replace(settings, inference_url=server.url)
    samples = cifar_test_samples[1::25]  # 400 images
    consumers("consume-db", settings)
    inference = consumers("consume-inference", settings)
    sender = threading.Thread(
        target=producer.produce,
        args=(settings, samples),
        kwargs={"devices": 4, "rate": 10, "progress": False},
    )
    sender.start()
    wait_for(lambda: labelled(collection) >= 50, 120, "the first labels")
    server.stop()
    stopped_at = labelled(collection)
    time.sleep(20)
    # Images kept arriving and being stored; none was labelled while the server was away.
    assert labelled(collection) == stopped_at
    assert collection.count_documents({}) > stopped_at
    assert inference.alive
    server.start()
    sender.join()
    wait_for(
        lambda: labelled(collection) >= len(samples),
        180,
        "every image labelled",
        on_timeout=inference.log,
    )
    assert_complete(collection, samples, len(samples))
    assert "retrying" in inference.log()


def test_an_image_of_2_mb_is_stored_and_labelled_without_frame_errors(
    served_settings, consumers, collection, cifar_test_samples
):
    """Over the broker's and kafka-python's 1 MB defaults, under MAX_IMAGE_BYTES (4 MiB)."""
    import io

    import numpy as np
    from PIL import Image

    from appliance.datasets import Sample

    pixels = np.random.default_rng(7).integers(0, 256, (820, 860, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    big = Sample("noise.png", buffer.getvalue(), "frog")
    assert 2_000_000 < len(big.image) < served_settings.max_image_bytes
    # With small images behind it, so that one fetch answer passes 1,000,000 bytes.
    samples = [big, *cifar_test_samples[3:303]]
    db = consumers("consume-db", served_settings)
    inference = consumers("consume-inference", served_settings)
    counts = producer.produce(served_settings, samples, devices=1, rate=0, count=len(samples),
                              progress=False)  # fmt: skip
    assert (counts.sent, counts.acknowledged, counts.failed) == (301, 301, 0)
    wait_for(
        lambda: labelled(collection) >= 301,
        180,
        "301 labelled documents",
        on_timeout=lambda: db.log() + inference.log(),
    )
    doc = collection.find_one({"ground_truth": "frog", "content_type": "image/png"})
    assert doc is not None and doc["image"] == big.image
    assert doc["prediction"]["label"] in CIFAR10_CLASSES
    for proc in (db, inference):
        assert "Invalid frame length" not in proc.log_path.read_text(), proc.command
        assert proc.alive


def test_a_message_over_the_brokers_limit_fails_at_once_with_the_reason(settings):
    """A broker (here: a topic) with a smaller limit than the images: a clear failure, no hang."""
    import threading

    from kafka.admin import KafkaAdminClient, NewTopic

    from appliance.datasets import Sample

    admin = KafkaAdminClient(**settings.kafka_options())
    admin.create_topics([NewTopic(settings.topic_images, 1, 1,
                                  topic_configs={"max.message.bytes": "100000"})])  # fmt: skip
    admin.close()
    samples = [Sample("big.bin", bytes(200_000), "cat"), Sample("small.bin", bytes(1_000), "cat")]
    result: dict = {}
    sender = threading.Thread(
        target=lambda: result.update(
            counts=producer.produce(settings, samples, devices=1, rate=0, progress=False)
        ),
        daemon=True,
    )
    sender.start()
    sender.join(120)
    assert not sender.is_alive(), "the producer hung on a message the broker refuses"
    counts = result["counts"]
    assert (counts.sent, counts.acknowledged, counts.failed) == (2, 1, 1)
    assert any("MessageSizeTooLarge" in error for error in counts.errors), counts.errors
