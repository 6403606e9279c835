"""The status view's counts (appliance/ops/counts.py) against the real local services."""

from __future__ import annotations

import pytest

from appliance.ops.counts import label_quality, measure

pytestmark = pytest.mark.integration


def doc(n: int, truth: str | None, label: str | None, model: str = "resnet50-a") -> dict:
    out: dict = {"_id": f"img-{n}", "device_id": "cam", "timestamp": float(n)}
    if truth is not None:
        out["ground_truth"] = truth
    if label is not None:
        out["prediction"] = {"label": label, "confidence": 0.5, "model": model}
    return out


def test_label_quality_per_model_counts_only_labelled_images_with_a_ground_truth(
    settings, collection
):
    collection.insert_many([
        doc(1, "cat", "cat"),
        doc(2, "dog", "dog"),
        doc(3, "dog", "cat"),
        doc(4, "frog", "frog", model="resnet50-b"),
        doc(5, None, "cat"),  # no ground truth: not counted
        doc(6, "ship", None),  # not labelled yet: not counted
    ])  # fmt: skip
    assert label_quality(collection) == {"resnet50-a": [2, 3], "resnet50-b": [1, 1]}
    assert label_quality(collection, {"timestamp": {"$gte": 2.0}}) == {
        "resnet50-a": [1, 2], "resnet50-b": [1, 1]
    }  # fmt: skip
    counts = measure(settings)
    assert (counts.stored, counts.labelled) == (6, 5)
    assert "labels match ground truth: 2 of 3 (66.7%), model resnet50-a" in counts.lines()
    assert "labels match ground truth: 1 of 1 (100.0%), model resnet50-b" in counts.lines()


def test_lag_counts_what_each_group_has_not_committed(settings):
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(**settings.kafka_options())
    for n in range(5):
        producer.send(settings.topic_images, f"image {n}".encode())
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        settings.topic_images,
        **settings.kafka_options(),
        group_id=settings.group_inference,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        read = 0
        for _ in range(30):
            read += sum(len(batch) for batch in consumer.poll(timeout_ms=1000).values())
            if read >= 5:
                break
        assert read == 5
        consumer.commit()
    finally:
        consumer.close()

    counts = measure(settings)
    assert counts.errors == []
    assert counts.images == 5
    # The inference group committed all five; the DB group never started, so all five wait.
    assert counts.lag == {settings.group_db: 5, settings.group_inference: 0}
