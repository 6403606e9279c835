"""What the cluster tests share: counting documents, driving the cameras, the settings file."""

from __future__ import annotations

import hashlib
import shlex

from appliance.cloud import topology
from appliance.model import CIFAR10_CLASSES
from tests.cluster.driver import Machine, ProducerRun
from tests.integration.test_pipeline import DOCUMENT_FIELDS

PRODUCER = "appliance-producer.service"


def stored(collection) -> int:
    return collection.count_documents({})


def labelled(collection) -> int:
    return collection.count_documents({"prediction": {"$exists": True}})


def dead_letters(kafka: Machine) -> int:
    """Records in the dead-letter topic, read by the consumers' image on the kafka host."""
    script = (
        "from kafka import KafkaConsumer, TopicPartition; import os; "
        "from appliance.config import Settings; "
        "c = KafkaConsumer(**Settings.from_env().kafka_options()); "
        "t = os.environ.get('TOPIC_DLQ', 'images.dlq'); "
        "ps = [TopicPartition(t, p) for p in (c.partitions_for_topic(t) or [])]; "
        "e, b = c.end_offsets(ps), c.beginning_offsets(ps); "
        "print(sum(e[p] - b[p] for p in ps))"
    )
    out = kafka.succeed(f'docker exec appliance-consumer-db python -c "{script}"', 120)
    return int(out.strip().splitlines()[-1])


def run_cameras(producer: Machine, collection, more: int, timeout: float = 900) -> None:
    """Start the cameras' unit and wait until ``more`` new documents are stored."""
    target = stored(collection) + more
    producer.succeed(f"systemctl start {PRODUCER}")
    producer.wait_until(f"{more} more images stored", lambda: stored(collection) >= target, timeout)


def stop_cameras(producer: Machine) -> ProducerRun:
    """Stop the cameras (they flush and print their counts) and return that run's counts."""
    before = len(producer.producer_runs())
    producer.succeed(f"systemctl stop {PRODUCER}", 180)
    runs = producer.wait_until(
        "the cameras' closing counts", lambda: producer.producer_runs()[before:], 60
    )
    return runs[-1]


def acknowledged(producer: Machine) -> tuple[int, int]:
    """(acknowledged, sent) over every camera run since the producer host booted."""
    runs = producer.producer_runs()
    return sum(r.acknowledged for r in runs), sum(r.sent for r in runs)


def wait_caught_up(machine: Machine, collection, expected: int, timeout: float = 1200) -> None:
    """Until exactly ``expected`` documents are stored and all of them labelled."""

    def done() -> bool:
        return stored(collection) >= expected and labelled(collection) >= stored(collection)

    machine.wait_until(f"{expected} stored and labelled", done, timeout, 10)


def assert_documents(
    collection, truth: dict[bytes, set[str]], expected_low: int, expected_high: int
):
    """The integration tests' field checks, on every document; returns the document count."""
    docs = list(collection.find())
    assert expected_low <= len(docs) <= expected_high, (len(docs), expected_low, expected_high)
    for doc in docs:
        assert set(doc) == DOCUMENT_FIELDS, doc["_id"]
        assert doc["ground_truth"] in truth[hashlib.sha256(doc["image"]).digest()], doc["_id"]
        assert doc["content_type"] == "image/jpeg"
        assert doc["prediction"]["label"] in CIFAR10_CLASSES
        assert 0.0 <= doc["prediction"]["confidence"] <= 1.0
        assert doc["prediction"]["model"].startswith("resnet50-")
        assert doc["stored_at"] > 0 and doc["labelled_at"] > 0
    # One document per send: no camera shot stored twice under two ids.
    shots = {(d["device_id"], d["timestamp"]) for d in docs}
    assert len(shots) == len(docs), f"{len(docs) - len(shots)} duplicated shots"
    return len(docs)


def run_in_producer_image(producer: Machine, script: str, timeout: float = 300) -> str:
    """A Python script in the cameras' image on the producer host, with the unit's settings and
    TLS files (the copies its last start made), as the cameras' own container has them."""
    image = producer.succeed(
        "docker inspect -f '{{.Config.Image}}' appliance-producer 2>/dev/null || "
        "grep -o 'appliance/producer:[^ ]*' /etc/systemd/system/appliance-producer.service"
    ).strip()
    mounts = f"$(sed -n 's/^TLS_MOUNTS=//p' /run/appliance/{PRODUCER}.env)"
    return producer.succeed(
        f"docker run --rm --network host --env-file {topology.ENV_FILE} {mounts} "
        f"--entrypoint python {image} -c {shlex.quote(script)}",
        timeout,
    )


def settings_text(cloud, state, role: str, **peers: str) -> str:
    """The env file's content exactly as the role's user-data writes it (peers overridable)."""
    import yaml

    plan = cloud.plan(state, roles=(role,), peers=peers or None)
    document = yaml.safe_load(plan.boots[0].user_data)
    (entry,) = [f for f in document["write_files"] if f["path"] == topology.ENV_FILE]
    return entry["content"]
