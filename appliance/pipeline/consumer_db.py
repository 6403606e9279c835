"""`appliance consume-db`: the only writer to MongoDB.

Reads `images` and `predictions`, upserts by image_id in bulk, and commits offsets only after
MongoDB acknowledged the write. Every field is written with ``$set`` (same message, same value) and
the arrival times with ``$min`` (first arrival wins), so either arrival order gives one complete
document and replaying both topics changes nothing. An arrival time (`stored_at`, `labelled_at`) is
the moment its chunk of the bulk write is sent, not when the batch was read: under a backlog the
batch may wait for earlier chunks or for a retry, and latency read from the document would hide it.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bson.binary import Binary
from kafka.consumer.fetcher import ConsumerRecord
from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect, BulkWriteError, ConnectionFailure, ExecutionTimeout

from appliance.config import Settings
from appliance.contract import BadMessage, parse_image_message, parse_prediction_message
from appliance.pipeline import kafkaio, peers

log = logging.getLogger(__name__)
NAME = "consume-db"
DUPLICATE_KEY = 11000
# Updates per bulk_write command. FerretDB 1.24 (the local stand-in for MongoDB) hangs on one
# update command with 100 or more statements that match existing documents: its SQLite handler
# holds a pooled connection per statement until the command ends. Small chunks cost MongoDB little.
WRITE_CHUNK = 50


class TransientWriteError(Exception):
    """A bulk write that may succeed if tried again (a race between two upserts of one _id)."""


@dataclass
class Stats:
    images: int = 0
    predictions: int = 0
    dead_lettered: int = 0
    batches: int = 0


@dataclass
class Update:
    """One image_id's merged update: fields to set, and arrival times to stamp when written."""

    fields: dict = field(default_factory=dict)  # written with $set
    arrivals: set[str] = field(default_factory=set)  # stamped at write time with $min

    def document(self, now: float) -> dict[str, dict]:
        return {"$set": self.fields, "$min": dict.fromkeys(sorted(self.arrivals), now)}


def updates_for(
    records: list[ConsumerRecord], settings: Settings
) -> tuple[dict[str, Update], list[tuple[ConsumerRecord, str]], Stats]:
    """Turn a batch into one merged update per image_id, plus the records to dead-letter."""
    updates: dict[str, Update] = {}
    bad: list[tuple[ConsumerRecord, str]] = []
    stats = Stats()
    for record in records:
        try:
            if record.topic == settings.topic_images:
                msg = parse_image_message(
                    record.value, settings.max_image_bytes, settings.max_image_pixels
                )
                fields = {
                    "device_id": msg.device_id,
                    "timestamp": msg.timestamp,
                    "image": Binary(msg.image),
                    "content_type": msg.content_type,
                }
                if msg.ground_truth is not None:
                    fields["ground_truth"] = msg.ground_truth
                arrival = "stored_at"
                stats.images += 1
            else:
                pred = parse_prediction_message(record.value)
                msg = pred
                fields = {
                    "prediction": {
                        "label": pred.label,
                        "confidence": pred.confidence,
                        "model": pred.model,
                        "inferred_at": pred.inferred_at,
                    }
                }
                arrival = "labelled_at"
                stats.predictions += 1
        except BadMessage as exc:
            bad.append((record, str(exc)))
            continue
        update = updates.setdefault(msg.image_id, Update())
        update.fields.update(fields)
        update.arrivals.add(arrival)
    stats.dead_lettered = len(bad)
    return updates, bad, stats


def write(
    collection: Collection,
    updates: dict[str, Update],
    clock: Callable[[], float] = time.time,
) -> bool:
    """Upsert every update, in chunks; each chunk's arrival times are the moment it is sent."""
    items = list(updates.items())
    try:
        # Chunks that succeed before a failure are simply written again on retry: idempotent
        # ($min keeps the first arrival time).
        for start in range(0, len(items), WRITE_CHUNK):
            now = clock()
            ops = [
                UpdateOne({"_id": image_id}, update.document(now), upsert=True)
                for image_id, update in items[start : start + WRITE_CHUNK]
            ]
            collection.bulk_write(ops, ordered=False)
    except BulkWriteError as exc:
        codes = {e.get("code") for e in exc.details.get("writeErrors", [])}
        if codes == {DUPLICATE_KEY}:
            # Two writers upserted the same new _id at once; the retry finds it and updates it.
            raise TransientWriteError("concurrent upsert of the same image_id") from exc
        raise
    return True


def consume(settings: Settings, stopper: kafkaio.Stopper, idle_exit: float | None = None) -> Stats:
    """Run until stopped (or idle for ``idle_exit`` seconds); returns what was processed.

    Waits for the broker and then MongoDB first, saying which one it is waiting for.
    """
    peers.wait_for_kafka(settings, stopper)
    client: MongoClient = MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=5000)
    try:
        peers.wait_for_mongodb(client, settings.mongodb_uri, stopper)
    except peers.Stopped:
        client.close()
        return Stats()
    collection = client[settings.mongodb_database][settings.mongodb_collection]
    try:
        consumer = peers.kafka_client(
            settings,
            stopper,
            lambda: kafkaio.make_consumer(
                settings,
                [settings.topic_images, settings.topic_predictions],
                settings.group_db,
                settings.db_batch_size,
            ),
        )
        producer = peers.kafka_client(settings, stopper, lambda: kafkaio.make_producer(settings))
    except peers.Stopped:
        client.close()
        return Stats()
    total = Stats()
    log.info(
        "consuming %s and %s into %s.%s",
        settings.topic_images,
        settings.topic_predictions,
        settings.mongodb_database,
        settings.mongodb_collection,
    )
    try:
        for records in kafkaio.batches(consumer, settings.db_batch_size, stopper, idle_exit):
            updates, bad, stats = updates_for(records, settings)
            done = kafkaio.retry_paused(
                consumer,
                lambda updates=updates: write(collection, updates),
                (AutoReconnect, ConnectionFailure, ExecutionTimeout, TransientWriteError),
                "MongoDB bulk write",
                stopper,
            )
            if not done:
                break  # not written: leave the offsets uncommitted for the next run
            futures = [
                kafkaio.send_to_dlq(producer, settings.topic_dlq, r, reason, NAME)
                for r, reason in bad
            ]
            kafkaio.wait_all(futures)
            kafkaio.commit(consumer, records)
            total.images += stats.images
            total.predictions += stats.predictions
            total.dead_lettered += stats.dead_lettered
            total.batches += 1
            log.debug(
                "batch %d: %d images, %d predictions, %d dead-lettered",
                total.batches,
                stats.images,
                stats.predictions,
                stats.dead_lettered,
            )
    finally:
        consumer.close(autocommit=False)
        producer.close()
        client.close()
    log.info("stopped: %s", total)
    return total


add_arguments = kafkaio.add_consumer_arguments


def run(args: argparse.Namespace) -> int:
    try:
        consume(Settings.from_env(), kafkaio.Stopper().install(), args.exit_when_idle)
    except peers.Stopped as exc:
        log.info("%s", exc)
    return 0
