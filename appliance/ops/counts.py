"""The pipeline's progress from Kafka and MongoDB: images in each topic, documents stored and
labelled, each consumer group's lag, and how many labels match the cameras' ground truth, per
model id. `appliance stack status` and `appliance services status` print it; neither raises when a
service is down, they say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.config import Settings


@dataclass
class Counts:
    """The pipeline's progress, from Kafka and MongoDB (what `status` prints)."""

    images: int = 0  # records in the images topic
    predictions: int = 0  # records in the predictions topic (redelivery may add some)
    dead_lettered: int = 0  # records in the dead-letter topic
    stored: int = 0  # documents in the collection
    labelled: int = 0  # documents with a prediction
    lag: dict[str, int] = field(default_factory=dict)  # consumer group -> records not committed
    # model id -> [labels matching ground truth, labelled documents that have a ground truth]
    quality: dict[str, list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [
            f"images: {self.images} in Kafka, {self.stored} stored, {self.labelled} labelled, "
            f"{self.dead_lettered} dead-lettered ({self.predictions} prediction records)"
        ]
        if self.lag:
            lag = ", ".join(f"{group} {value}" for group, value in self.lag.items())
            lines.append(f"consumer lag: {lag}")
        lines += quality_lines(self.quality)
        lines += [f"  ({error})" for error in self.errors]
        return lines


def quality_lines(quality: dict[str, list[int]]) -> list[str]:
    """E.g. "labels match ground truth: 912 of 1000 (91.2%), model resnet50-1a2b3c4d5e6f"."""
    return [
        f"labels match ground truth: {match} of {total} ({100 * match / total:.1f}%), model {model}"
        for model, (match, total) in sorted(quality.items())
        if total
    ]


def label_quality(collection: Any, query: dict[str, Any] | None = None) -> dict[str, list[int]]:
    """Per model id: labels that match ground truth, of labelled documents that have one."""
    quality: dict[str, list[int]] = {}
    wanted = {**(query or {}), "prediction": {"$exists": True}, "ground_truth": {"$exists": True}}
    # Only the two labels and the model id cross the wire, not the images.
    for doc in collection.find(wanted, {"ground_truth": 1, "prediction.label": 1,
                                         "prediction.model": 1}):  # fmt: skip
        tally = quality.setdefault(doc["prediction"].get("model", "?"), [0, 0])
        tally[0] += doc["ground_truth"] == doc["prediction"]["label"]
        tally[1] += 1
    return quality


def measure(settings: Settings) -> Counts:
    """The counts, read from Kafka and MongoDB directly (from where both are reachable)."""
    counts = Counts()
    try:
        _kafka_counts(settings, counts)
    except Exception as exc:  # any client failure is reported, not raised: status must print
        counts.errors.append(f"kafka: {type(exc).__name__}: {exc}")
    try:
        _mongodb_counts(settings, counts)
    except Exception as exc:
        counts.errors.append(f"mongodb: {type(exc).__name__}: {exc}")
    return counts


def _kafka_counts(settings: Settings, counts: Counts) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(
        **settings.kafka_options(), client_id="appliance-stack-counts", enable_auto_commit=False
    )
    admin = KafkaAdminClient(**settings.kafka_options(), client_id="appliance-stack-counts")
    try:
        ends: dict[TopicPartition, int] = {}
        starts: dict[TopicPartition, int] = {}
        topics = (settings.topic_images, settings.topic_predictions, settings.topic_dlq)
        sizes = dict.fromkeys(topics, 0)
        for topic in topics:
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
            ]
            if not partitions:
                continue
            ends.update(consumer.end_offsets(partitions))
            starts.update(consumer.beginning_offsets(partitions))
            sizes[topic] = sum(ends[tp] - starts[tp] for tp in partitions)
        counts.images = sizes[settings.topic_images]
        counts.predictions = sizes[settings.topic_predictions]
        counts.dead_lettered = sizes[settings.topic_dlq]
        groups = {
            settings.group_db: (settings.topic_images, settings.topic_predictions),
            settings.group_inference: (settings.topic_images,),
        }
        for group, group_topics in groups.items():
            committed = _committed(admin, group)
            lag = 0
            for tp, end in ends.items():
                if tp.topic not in group_topics:
                    continue
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
                lag += max(0, end - done)
            counts.lag[group] = lag
    finally:
        consumer.close()
        admin.close()


def _committed(admin: Any, group: str) -> dict[Any, Any]:
    """The group's committed offsets: none while no group has ever committed on this broker."""
    import time

    from kafka.errors import (
        CoordinatorLoadInProgressError,
        CoordinatorNotAvailableError,
        NotCoordinatorError,
    )

    # A broker makes its offsets topic at the first group request; asking before that would make
    # it, and leave the coordinator moving for a few seconds. (The admin client, not the
    # consumer: a consumer's topics() never lists internal topics.)
    if "__consumer_offsets" not in admin.list_topics():
        return {}
    moving = (CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError)
    for _ in range(4):
        try:
            return admin.list_consumer_group_offsets(group)
        except moving:
            time.sleep(1)
    return admin.list_consumer_group_offsets(group)  # the last try's error is reported


def _mongodb_counts(settings: Settings, counts: Counts) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongodb_uri, serverSelectionTimeoutMS=5000, connectTimeoutMS=5000
    )
    try:
        images = client[settings.mongodb_database][settings.mongodb_collection]
        counts.stored = images.count_documents({})
        counts.labelled = images.count_documents({"prediction": {"$exists": True}})
        counts.quality = label_quality(images)
    finally:
        client.close()


def inference_health(url: str, timeout_s: float = 3.0) -> str:
    """One line on the inference server at ``url``: its /healthz answer, or why there is none."""
    import requests

    try:
        response = requests.get(f"{url.rstrip('/')}/healthz", timeout=timeout_s)
    except requests.RequestException as exc:
        return f"inference server {url}: not answering ({type(exc).__name__})"
    try:
        body = response.json()
    except ValueError:
        return f"inference server {url}: HTTP {response.status_code}, not the appliance's server"
    detail = body.get("model") or body.get("error") or ""
    return f"inference server {url}: {body.get('status', response.status_code)} {detail}".rstrip()
