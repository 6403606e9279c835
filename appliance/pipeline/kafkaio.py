"""Kafka plumbing shared by the producer and both consumers: clients, topics, DLQ, commits."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition

from appliance.config import Settings

log = logging.getLogger(__name__)

# Headers on a dead-letter record; the value and key are the original bytes, untouched.
DLQ_REASON = "dlq.reason"
DLQ_SOURCE_TOPIC = "dlq.source.topic"
DLQ_SOURCE_PARTITION = "dlq.source.partition"
DLQ_SOURCE_OFFSET = "dlq.source.offset"
DLQ_CONSUMER = "dlq.consumer"


def make_producer(settings: Settings, **overrides: object) -> KafkaProducer:
    """An idempotent producer waiting for all in-sync replicas: no loss, no broker duplicates."""
    config: dict[str, object] = {
        **settings.kafka_options(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_request_size": settings.max_image_bytes * 2,
        "client_id": "appliance",
    }
    config.update(overrides)
    return KafkaProducer(**config)


# One fetch answer may carry this much (many images, or a few at MAX_IMAGE_BYTES). kafka-python
# refuses any network frame over receive_message_max_bytes (1,000,000 by default) with "Invalid
# frame length", then reconnects: room for a whole fetch and its framing.
FETCH_MAX_BYTES = 64 * 1024 * 1024
FRAME_OVERHEAD_BYTES = 1024 * 1024


def make_consumer(
    settings: Settings, topics: Iterable[str], group_id: str, max_poll_records: int
) -> KafkaConsumer:
    """A consumer that commits by hand, only after its work is durable (at-least-once)."""
    return KafkaConsumer(
        *topics,
        **settings.kafka_options(),
        group_id=group_id,
        client_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        fetch_max_bytes=FETCH_MAX_BYTES,
        max_partition_fetch_bytes=settings.max_image_bytes * 2,
        receive_message_max_bytes=FETCH_MAX_BYTES + FRAME_OVERHEAD_BYTES,
    )


def ensure_topics(settings: Settings, topics: Iterable[str] | None = None) -> None:
    """Create the pipeline's topics if missing; an existing topic is left as it is."""
    names = list(topics or (settings.topic_images, settings.topic_predictions, settings.topic_dlq))
    admin = KafkaAdminClient(**settings.kafka_options(), client_id="appliance-admin")
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            # Another process may create one between our list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(n, settings.topic_partitions, 1) for n in missing])
            log.info("created topics %s", ", ".join(missing))
    finally:
        admin.close()


def dlq_headers(record: ConsumerRecord, reason: str, consumer: str) -> list[tuple[str, bytes]]:
    return [
        (DLQ_REASON, reason.encode()),
        (DLQ_SOURCE_TOPIC, record.topic.encode()),
        (DLQ_SOURCE_PARTITION, str(record.partition).encode()),
        (DLQ_SOURCE_OFFSET, str(record.offset).encode()),
        (DLQ_CONSUMER, consumer.encode()),
    ]


def send_to_dlq(
    producer: KafkaProducer, topic: str, record: ConsumerRecord, reason: str, consumer: str
):
    """Send the original key and value with the reason; returns the send future."""
    log.warning(
        "dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason
    )
    return producer.send(
        topic, key=record.key, value=record.value, headers=dlq_headers(record, reason, consumer)
    )


def wait_all(futures: list, timeout: float = 60.0) -> None:
    """Block until every send is acknowledged; raises the first failure."""
    for future in futures:
        future.get(timeout=timeout)


def next_offsets(records: Iterable[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    """Offsets to commit after ``records``: one past the highest offset seen per partition."""
    highest: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        highest[tp] = max(highest.get(tp, -1), r.offset)
    return {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in highest.items()}


def commit(consumer: KafkaConsumer, records: list[ConsumerRecord]) -> bool:
    """Commit after the records' work is durable; a lost partition just means redelivery."""
    if not records:
        return True
    try:
        consumer.commit(next_offsets(records))
        return True
    except CommitFailedError as exc:
        # The group rebalanced under us: another member re-reads these records. Our writes are
        # idempotent, so redelivery is harmless.
        log.warning("commit failed after a rebalance, records will be redelivered: %s", exc)
        return False


def batches(
    consumer: KafkaConsumer, max_records: int, stopper: Stopper, idle_exit: float | None = None
) -> Iterator[list[ConsumerRecord]]:
    """Polled records, a batch at a time, until stopped (or idle for ``idle_exit`` seconds)."""
    last_record = time.monotonic()
    while not stopper.stopped:
        polled = consumer.poll(timeout_ms=1000, max_records=max_records)
        records = [r for batch in polled.values() for r in batch]
        if records:
            last_record = time.monotonic()
            yield records
        elif idle_exit is not None and time.monotonic() - last_record > idle_exit:
            return


def add_consumer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="stop after this long with no messages (default: run forever)",
    )


class Stopper:
    """SIGTERM/SIGINT set a flag; loops finish their batch and exit cleanly."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> Stopper:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.event.set())
        return self

    @property
    def stopped(self) -> bool:
        return self.event.is_set()


def retry_paused(
    consumer: KafkaConsumer,
    attempt: Callable[[], object],
    retryable: tuple[type[BaseException], ...],
    what: str,
    stopper: Stopper,
    max_backoff: float = 10.0,
):
    """Call ``attempt`` until it succeeds, backing off between failures.

    While waiting, the consumer's partitions are paused and ``poll`` is still called, so the
    group keeps the member (max.poll.interval) without fetching anything new. Nothing is
    skipped and nothing committed. Returns None if asked to stop meanwhile.
    """
    delay = 0.5
    paused = False
    try:
        while True:
            try:
                return attempt()
            except retryable as exc:
                if stopper.stopped:
                    return None
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                if not paused:
                    consumer.pause(*consumer.assignment())
                    paused = True
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not stopper.stopped:
                    consumer.poll(timeout_ms=200)
                delay = min(delay * 2, max_backoff)
    finally:
        if paused:
            consumer.resume(*consumer.paused())


__all__ = [
    "KafkaError",
    "Stopper",
    "commit",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "retry_paused",
    "send_to_dlq",
    "wait_all",
]
