"""The DB consumer: arrival order, replay, and a SIGKILL in the middle of a run."""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time

import pytest
from kafka import KafkaProducer

from appliance.contract import encode_image_message, encode_prediction_message
from appliance.pipeline import producer

from .harness import Relay, wait_for

pytestmark = pytest.mark.integration


def send_all(settings, topic: str, messages: list[tuple[str, bytes]]) -> None:
    client = KafkaProducer(**settings.kafka_options(), acks="all")
    for key, value in messages:
        client.send(topic, key=key.encode(), value=value)
    client.flush()
    client.close()


def test_predictions_before_images_then_full_replay(
    settings, consumers, collection, cifar_test_samples
):
    from appliance.pipeline.kafkaio import ensure_topics

    ensure_topics(settings)
    samples = cifar_test_samples[5:205]
    ids = [f"img-{i:04d}" for i in range(len(samples))]
    predictions = [
        encode_prediction_message(i, "frog", 0.5, "model-x", 100.0 + n) for n, i in enumerate(ids)
    ]
    images = [
        encode_image_message(s.image, "camera-07", s.label, image_id=i, timestamp=50.0)
        for s, i in zip(samples, ids, strict=True)
    ]

    send_all(settings, settings.topic_predictions, predictions)
    db = consumers("consume-db", settings)
    wait_for(lambda: collection.count_documents({}) == len(ids), 60, "prediction-only documents")
    assert collection.count_documents({"image": {"$exists": True}}) == 0

    send_all(settings, settings.topic_images, images)
    wait_for(
        lambda: collection.count_documents({"image": {"$exists": True}}) == len(ids),
        60,
        "images joined to their predictions",
        on_timeout=db.log,
    )
    before = {d["_id"]: d for d in collection.find()}
    assert len(before) == len(ids)
    for n, (image_id, sample) in enumerate(zip(ids, samples, strict=True)):
        doc = before[image_id]
        assert doc["image"] == sample.image and doc["ground_truth"] == sample.label
        assert doc["prediction"] == {
            "label": "frog",
            "confidence": 0.5,
            "model": "model-x",
            "inferred_at": 100.0 + n,
        }
        assert doc["labelled_at"] <= doc["stored_at"]  # the prediction really came first

    # A new consumer group reads both topics again from the very beginning.
    db.kill(signal.SIGTERM)
    replay = dataclasses.replace(settings, group_db=settings.group_db + "-replay")
    replayer = consumers("consume-db", replay)
    wait_for(lambda: _lag_zero(replay), 60, "the replay to finish", on_timeout=replayer.log)
    time.sleep(3)
    after = {d["_id"]: d for d in collection.find()}
    assert after == before


def _lag_zero(settings) -> bool:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **settings.kafka_options(),
        group_id=settings.group_db,
        enable_auto_commit=False,
    )
    try:
        for topic in (settings.topic_images, settings.topic_predictions):
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
            ends = consumer.end_offsets(parts)
            for tp in parts:
                if (consumer.committed(tp) or 0) < ends[tp]:
                    return False
        return True
    finally:
        consumer.close()


def test_sigkill_mid_run_loses_and_duplicates_nothing(
    settings, consumers, collection, cifar_test_samples
):
    samples = cifar_test_samples[2::10]  # 1,000 images
    db = consumers("consume-db", settings)
    result = {}
    sender = threading.Thread(
        target=lambda: result.update(
            counts=producer.produce(settings, samples, devices=4, rate=50, progress=False)
        )
    )
    sender.start()
    wait_for(lambda: collection.count_documents({}) >= 200, 120, "the first 200 documents")
    db.kill(signal.SIGKILL)
    killed_at = collection.count_documents({})
    assert killed_at < len(samples), "the kill must land mid-run"
    time.sleep(2)
    consumers("consume-db", settings)
    sender.join()
    assert result["counts"].acknowledged == len(samples)
    wait_for(lambda: collection.count_documents({}) >= len(samples), 120, "every image stored")
    time.sleep(3)
    docs = list(collection.find({}, {"image": 1}))
    assert len(docs) == len(samples)
    assert len({bytes(d["image"]) for d in docs}) == len(samples)


def test_mongodb_late_at_start_is_waited_for_by_address_then_caught_up(
    settings, consumers, collection, cifar_test_samples
):
    """Booted before its database: the consumer stays up, names the peer, and loses nothing."""
    from pymongo.uri_parser import parse_uri

    (host, port), *_ = parse_uri(settings.mongodb_uri)["nodelist"]
    relay = Relay((host, port))
    try:
        # The same URI (credentials and all), through the relay.
        relayed = settings.mongodb_uri.replace(f"{host}:{port}", f"127.0.0.1:{relay.port}")
        late = dataclasses.replace(settings, mongodb_uri=relayed)
        db = consumers("consume-db", late)
        samples = cifar_test_samples[300:400]
        counts = producer.produce(settings, samples, devices=2, rate=0, progress=False)
        assert counts.acknowledged == 100
        wait_for(
            lambda: f"waiting for MongoDB at 127.0.0.1:{relay.port}" in db.log(),
            60,
            "the consumer to name the peer it waits for",
            on_timeout=db.log,
        )
        time.sleep(3)
        assert db.alive and collection.count_documents({}) == 0
        relay.start()
        wait_for(
            lambda: collection.count_documents({}) >= 100, 120, "100 documents", on_timeout=db.log
        )
        assert f"MongoDB at 127.0.0.1:{relay.port} answered" in db.log()
        assert collection.count_documents({}) == 100 and db.alive
    finally:
        relay.close()


def test_arrival_times_are_stamped_as_each_chunk_is_written(collection):
    from appliance.pipeline.consumer_db import WRITE_CHUNK, Update, write

    sent: list[float] = []

    def clock() -> float:
        sent.append(time.time())
        return sent[-1]

    ids = [f"img-{n:04d}" for n in range(2 * WRITE_CHUNK + 1)]
    read_at = time.time()  # the batch is read here; writing it starts later
    updates = {i: Update({"device_id": "camera-01"}, {"stored_at"}) for i in ids}
    time.sleep(0.2)
    write(collection, updates, clock)

    assert len(sent) == 3, "one stamp per chunk"
    docs = {d["_id"]: d for d in collection.find()}
    for n, image_id in enumerate(ids):
        assert docs[image_id]["stored_at"] == sent[n // WRITE_CHUNK]
        assert docs[image_id]["stored_at"] >= read_at + 0.2

    # Written again (a retry, a replay): the first arrival stays; a new arrival is added.
    write(collection, {ids[0]: Update({"device_id": "camera-01"}, {"stored_at", "labelled_at"})})
    again = collection.find_one({"_id": ids[0]})
    assert again["stored_at"] == sent[0]
    assert again["labelled_at"] > sent[-1]


def test_edge_cases_land_where_the_contract_says(
    settings, consumers, collection, cifar_test_samples
):
    """Each case beyond the malformed ones: dead-lettered with a reason, or stored as written
    down in appliance/contract.py and the README."""
    from appliance.pipeline import kafkaio

    from .test_dead_letters import read_topic

    kafkaio.ensure_topics(settings)
    sample = cifar_test_samples[0]
    _, image = encode_image_message(sample.image, "camera-01", sample.label, image_id="img-extra")
    extra = json.dumps({**json.loads(image), "colour": "red"}).encode()
    send_all(settings, settings.topic_images, [("img-extra", extra)])
    send_all(settings, settings.topic_predictions, [
        # two predictions for one image: the later one in the partition (keyed by image_id) wins
        encode_prediction_message("img-extra", "cat", 0.6, "model-a", 100.0),
        encode_prediction_message("img-extra", "dog", 0.7, "model-b", 101.0),
        # a prediction whose image never arrives: a document with the prediction only
        encode_prediction_message("img-orphan", "ship", 0.9, "model-a", 102.0),
        # a label outside CIFAR-10: dead-lettered
        encode_prediction_message("img-sofa", "sofa", 0.9, "model-a", 103.0),
    ])  # fmt: skip
    db = consumers("consume-db", settings)
    wait_for(lambda: collection.count_documents({}) == 2, 60, "two documents", on_timeout=db.log)
    (dead,) = read_topic(settings, settings.topic_dlq, 1)
    assert dead.key == b"img-sofa"
    reason = dict(dead.headers)[kafkaio.DLQ_REASON].decode()
    assert "'label' is 'sofa', not a CIFAR-10 class" in reason

    doc = collection.find_one({"_id": "img-extra"})
    assert "colour" not in doc, "fields outside the contract are not stored"
    assert doc["prediction"]["label"] == "dog" and doc["prediction"]["model"] == "model-b"
    orphan = collection.find_one({"_id": "img-orphan"})
    assert set(orphan) == {"_id", "prediction", "labelled_at"}

    # Deterministic: a replay of both topics from the start gives the same documents.
    before = {d["_id"]: d for d in collection.find()}
    db.kill(signal.SIGTERM)
    replay = dataclasses.replace(settings, group_db=settings.group_db + "-replay")
    replayer = consumers("consume-db", replay)
    wait_for(lambda: _lag_zero(replay), 60, "the replay to finish", on_timeout=replayer.log)
    assert {d["_id"]: d for d in collection.find()} == before
