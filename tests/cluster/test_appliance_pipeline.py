"""The pipeline across the four hosts, and faults while images flow. Runs after
test_appliance_hosts.py (pytest takes the files in name order); the tests run in file order and
leave the deployment up and consistent.

Expected counts come from the cameras themselves: each run of the producer's unit ends with
"sent S, acknowledged A, failed F" in its journal. What Kafka acknowledged must be stored and
labelled, once; what it did not (F, during a broker outage) was never accepted, and is reported.
"""

from __future__ import annotations

import time

import pytest

from appliance.cloud import topology
from tests.cluster.helpers import (
    PRODUCER,
    acknowledged,
    assert_documents,
    dead_letters,
    labelled,
    run_cameras,
    settings_text,
    stop_cameras,
    stored,
    wait_caught_up,
)

pytestmark = pytest.mark.timeout(3600)
# Under software emulation a broker takes minutes to boot and listen.
BOOT_TIMEOUT_S = 1500
CONSUMER_DB = "appliance-consumer-db.service"
# What the DB consumer logs each time a write meets MongoDB away (kafkaio.retry_paused).
WRITE_FAILED = "MongoDB bulk write failed"


# -- the pipeline ---------------------------------------------------------------------------------


def test_cameras_images_are_stored_and_labelled_once(machines, collection, truth, count):
    producer, kafka = machines["producer"], machines["kafka"]
    producer.wait_until(
        f"{count} images stored", lambda: stored(collection) >= count, BOOT_TIMEOUT_S, 10
    )
    run = stop_cameras(producer)
    assert run.failed == 0 and run.acknowledged == run.sent >= count, run
    total, _ = acknowledged(producer)
    wait_caught_up(kafka, collection, total)
    time.sleep(10)  # anything extra would show up now
    assert assert_documents(collection, truth, total, total) == total
    assert labelled(collection) == total
    assert dead_letters(kafka) == 0


# -- faults while images flow ---------------------------------------------------------------------


def test_kafka_host_power_loss_loses_nothing_acknowledged(machines, collection, truth):
    producer, kafka = machines["producer"], machines["kafka"]
    run_cameras(producer, collection, 20)
    kafka.crash()
    time.sleep(10)
    kafka.start()
    kafka.wait_healthy(BOOT_TIMEOUT_S)
    # Images flow again, through the rebooted broker.
    run_cameras(producer, collection, 20)
    run = stop_cameras(producer)
    total, sent = acknowledged(producer)
    wait_caught_up(kafka, collection, total)
    time.sleep(10)
    n = assert_documents(collection, truth, total, sent)
    print(
        f"\nkafka power loss: this run sent {run.sent}, Kafka acknowledged {run.acknowledged}, "
        f"{run.failed} failed at the cameras while the broker was away (never accepted, so never "
        f"stored); stored {n} of {total} acknowledged in all ({n - total} sent but unacknowledged)"
    )
    assert labelled(collection) == n
    assert dead_letters(kafka) == 0


def test_mongodb_host_reboot_loses_nothing(machines, collection, truth):
    producer, kafka, mongodb = machines["producer"], machines["kafka"], machines["mongodb"]
    run_cameras(producer, collection, 20)
    failures = kafka.journal(CONSUMER_DB).count(WRITE_FAILED)
    mongodb.shutdown()
    # Held down until the DB consumer has met the outage: a reboot quicker than the client's
    # server selection would be ridden out unseen, and test nothing.
    kafka.wait_until(
        "the DB consumer meets the outage",
        lambda: kafka.journal(CONSUMER_DB).count(WRITE_FAILED) > failures,
        BOOT_TIMEOUT_S,
        5,
    )
    mongodb.start()
    mongodb.wait_healthy(BOOT_TIMEOUT_S)
    run_cameras(producer, collection, 20)
    run = stop_cameras(producer)
    assert run.failed == 0, run  # the broker never went away
    total, sent = acknowledged(producer)
    wait_caught_up(kafka, collection, total)
    assert assert_documents(collection, truth, total, sent) >= total


def test_kafka_host_booted_before_mongodb_waits_then_catches_up(machines, collection, truth):
    producer, kafka, mongodb = machines["producer"], machines["kafka"], machines["mongodb"]
    mongodb.shutdown()
    kafka.reboot()
    waiting = f"waiting for MongoDB at {mongodb.address}:{topology.MONGODB_PORT}"
    kafka.wait_until(
        "the DB consumer names the peer it waits for",
        lambda: waiting in kafka.journal(CONSUMER_DB, this_boot=True),
        BOOT_TIMEOUT_S,
        10,
    )
    # Cameras send meanwhile: the broker keeps their images until MongoDB arrives.
    producer.succeed(f"systemctl start {PRODUCER}")
    time.sleep(30)
    run = stop_cameras(producer)
    assert run.failed == 0 and run.acknowledged > 0, run
    unit = kafka.unit_property(CONSUMER_DB, "ActiveState")
    assert unit == "active", f"the DB consumer did not keep waiting: {unit}"
    mongodb.start()
    mongodb.wait_healthy(BOOT_TIMEOUT_S)
    total, sent = acknowledged(producer)
    wait_caught_up(kafka, collection, total)
    assert assert_documents(collection, truth, total, sent) >= total


def test_wrong_mongodb_address_is_named_and_nothing_is_lost(
    machines, collection, truth, cloud, state
):
    producer, kafka = machines["producer"], machines["kafka"]
    wrong = str(kafka.address.rsplit(".", 1)[0]) + ".99"
    kafka.write_file(topology.ENV_FILE, settings_text(cloud, state, "kafka", mongodb=wrong))
    kafka.wait_until(
        "the DB consumer names the unreachable peer",
        lambda: (
            f"waiting for MongoDB at {wrong}:{topology.MONGODB_PORT}" in kafka.journal(CONSUMER_DB)
        ),
        BOOT_TIMEOUT_S,
        10,
    )
    before = stored(collection)
    producer.succeed(f"systemctl start {PRODUCER}")
    time.sleep(30)
    run = stop_cameras(producer)
    assert run.failed == 0 and run.acknowledged > 0, run
    assert stored(collection) == before, "stored with a wrong MongoDB address?"
    # The corrected file, as the user-data writes it: the consumers restart and catch up.
    kafka.write_file(topology.ENV_FILE, settings_text(cloud, state, "kafka"))
    total, sent = acknowledged(producer)
    wait_caught_up(kafka, collection, total)
    assert assert_documents(collection, truth, total, sent) >= total
    kafka.wait_healthy(600)
