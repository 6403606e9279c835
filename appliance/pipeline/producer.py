"""`appliance produce`: simulated cameras that send CIFAR-10 images to Kafka.

Each device sends at its own rate; one idempotent producer (acks=all) carries them all, keyed by
image_id. The run ends with sent / acknowledged / failed counts and fails if any send failed.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from tqdm import tqdm

from appliance import datasets
from appliance.config import Settings
from appliance.contract import encode_image_message
from appliance.pipeline import kafkaio, peers

log = logging.getLogger(__name__)
ORDERS = ("sequential", "shuffle", "random")


@dataclass
class Counts:
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    # A send timed out (delivery.timeout.ms passed, the broker away): the client is replaced.
    client_stale: bool = field(default=False, repr=False)
    _client: int = field(default=0, repr=False)  # which client's answers still count
    _unanswered: int = field(default=0, repr=False)  # that client's sends with no answer yet
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sending(self) -> tuple[Callable[[object], None], Callable[[BaseException], None]]:
        """Count one send; the callbacks for its answer (ignored once its client is dropped)."""
        with self._lock:
            self.sent += 1
            self._unanswered += 1
            client = self._client
        return (lambda _metadata: self._answer(client, None),
                lambda exc: self._answer(client, exc))  # fmt: skip

    def _answer(self, client: int, exc: BaseException | None) -> None:
        with self._lock:
            if client != self._client:
                return  # counted as failed when its client was dropped
            self._unanswered -= 1
            if exc is None:
                self.acknowledged += 1
                return
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(str(exc))
            if isinstance(exc, KafkaTimeoutError):
                self.client_stale = True

    def drop_client(self) -> int:
        """The sends the dropped client never answered: failed, never acknowledged."""
        with self._lock:
            dropped, self._unanswered = self._unanswered, 0
            self.failed += dropped
            self._client += 1
            self.client_stale = False
        return dropped


def ordered(samples: Sequence[datasets.Sample], order: str, seed: int) -> Iterator[datasets.Sample]:
    """Endless stream of samples: in source order, reshuffled each pass, or drawn at random."""
    rng = random.Random(seed)
    if order == "random":
        while True:
            yield rng.choice(samples)
    indices = list(range(len(samples)))
    while True:
        if order == "shuffle":
            rng.shuffle(indices)
        for i in indices:
            yield samples[i]


def oversized(samples: Sequence[datasets.Sample], max_image_bytes: int) -> str | None:
    """Why the source cannot be sent as it is, or None: images the consumers would dead-letter."""
    large = [s for s in samples if len(s.image) > max_image_bytes]
    if not large:
        return None
    examples = ", ".join(f"{s.name} ({len(s.image):,} bytes)" for s in large[:3])
    return (
        f"{len(large)} of {len(samples)} images are over MAX_IMAGE_BYTES ({max_image_bytes:,}), "
        f"e.g. {examples}; the consumers would dead-letter them. Leave them out, or raise "
        "MAX_IMAGE_BYTES everywhere (the broker takes up to 16 MiB messages)."
    )


def _drop_client(client: KafkaProducer, counts: Counts) -> int:
    """Close a client whose sends timed out; its unanswered sends count as failed."""
    dropped = counts.drop_client()
    # close() would wait on those sends first, and they never end: close at once, and stop its
    # I/O thread, which close() leaves running when its flush fails (kafka-python's internals:
    # it has no public way to abandon a client).
    with contextlib.suppress(KafkaError):
        client.close(timeout=0)
    sender = getattr(client, "_sender", None)
    if sender is not None and sender.is_alive():
        sender.force_close()
    client._closed = True  # else its __del__ tries the same close again and prints the error
    return dropped


def _replace_client(
    settings: Settings, stopper: kafkaio.Stopper, old: KafkaProducer, counts: Counts
) -> KafkaProducer | None:
    """A new Kafka client in place of one whose sends timed out.

    kafka-python 2.3 stops sending for good once batches have expired during a broker outage
    longer than delivery.timeout.ms (2 minutes: a kafka VM's reboot under emulation): every later
    batch expires too, though the broker is back. A new client, made once the broker answers,
    sends again. What the old one still held is failed, never acknowledged, and counted so. None
    when stopped meanwhile.
    """
    dropped = _drop_client(old, counts)
    log.warning(
        "sends timed out while the broker was away: a new Kafka client (%d sends of the old one "
        "never answered: counted as failed)",
        dropped,
    )
    try:
        return peers.kafka_client(settings, stopper, lambda: kafkaio.make_producer(settings))
    except peers.Stopped:
        return None


def device_names(prefix: str, devices: int) -> list[str]:
    return [f"{prefix}-{i:02d}" for i in range(devices)]


def produce(
    settings: Settings,
    samples: Sequence[datasets.Sample],
    devices: int = 4,
    rate: float = 0.0,
    count: int | None = None,
    duration: float | None = None,
    order: str = "sequential",
    seed: int = 0,
    progress: bool = True,
    forever: bool = False,
    stopper: kafkaio.Stopper | None = None,
) -> Counts:
    """Send images round the devices until ``count`` images or ``duration`` seconds.

    ``rate`` is images per second per device; 0 sends as fast as the broker takes them. With
    neither limit, the source is sent once, or (``forever``) again and again until stopped.
    Waits for the broker first, saying so, and sends nothing until it answers.
    """
    if count is None and duration is None and not forever:
        count = len(samples)
    stopper = stopper or kafkaio.Stopper()
    peers.wait_for_kafka(settings, stopper)
    producer = peers.kafka_client(settings, stopper, lambda: kafkaio.make_producer(settings))
    counts = Counts()
    names = device_names(settings.device_id, devices)
    stream = ordered(samples, order, seed)
    start = time.monotonic()
    # (next send time, sends so far, device): each device keeps its own schedule; at equal times
    # (always, with rate 0) the device that sent least goes next, so devices take turns.
    schedule = [(start, 0, i) for i in range(devices)]
    heapq.heapify(schedule)
    bar = tqdm(total=count, unit="img", desc="sent", disable=not progress, file=sys.stderr)
    try:
        while (count is None or counts.sent < count) and not stopper.stopped:
            due, sends, device = heapq.heappop(schedule)
            now = time.monotonic()
            if duration is not None and max(now, due) - start >= duration:
                break
            if due > now:
                time.sleep(due - now)
            if counts.client_stale:
                producer = _replace_client(settings, stopper, producer, counts)
                if producer is None:
                    break  # stopped while waiting for the broker
            sample = next(stream)
            key, value = encode_image_message(sample.image, names[device], sample.label)
            acked, failed = counts.sending()
            try:
                future = producer.send(settings.topic_images, key=key.encode(), value=value)
            except kafkaio.KafkaError as exc:  # e.g. no broker metadata within max_block_ms
                failed(exc)
            else:
                future.add_callback(acked).add_errback(failed)
            bar.update(1)
            heapq.heappush(schedule, (due + (1.0 / rate if rate > 0 else 0.0), sends + 1, device))
    finally:
        if producer is not None and counts.client_stale:
            _drop_client(producer, counts)  # stopped before it was replaced: a flush would hang
        elif producer is not None:
            producer.flush()
            producer.close()
        bar.close()
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default="cifar10",
        help="'cifar10' (official archive, downloaded and MD5-checked), a folder "
        "of class subfolders, or a .tar.gz of one (default: cifar10)",
    )
    parser.add_argument(
        "--split",
        choices=datasets.SPLITS,
        default="test",
        help="which part of the source to send (default: test)",
    )
    parser.add_argument("--devices", type=int, default=4, help="number of cameras (default: 4)")
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="images per second per camera; 0 = as fast as possible (default: 5)",
    )
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--count", type=int, help="total images to send (default: the whole split)")
    limit.add_argument("--duration", type=float, help="seconds to send for")
    limit.add_argument(
        "--forever",
        action="store_true",
        help="keep sending (the source reshuffled each pass) until stopped: a camera's life",
    )
    parser.add_argument(
        "--order",
        choices=ORDERS,
        default="shuffle",
        help="source order, reshuffled each pass, or random draws (default: shuffle)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    for name in ("devices", "count"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"appliance produce: --{name} must be positive, got {value}", file=sys.stderr)
            return 2
    if args.rate < 0 or (args.duration is not None and args.duration <= 0):
        print("appliance produce: --rate must be >= 0 and --duration > 0", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        samples = datasets.load(args.source, args.split)
    except datasets.DatasetError as exc:
        print(f"appliance produce: {exc}", file=sys.stderr)
        return 2
    log.info("loaded %d images from %s (%s)", len(samples), args.source, args.split)
    too_large = oversized(samples, settings.max_image_bytes)
    if too_large:
        print(f"appliance produce: {too_large}", file=sys.stderr)
        return 2
    stopper = kafkaio.Stopper().install()
    try:
        counts = produce(
            settings,
            samples,
            devices=args.devices,
            rate=args.rate,
            count=args.count,
            duration=args.duration,
            order=args.order,
            seed=args.seed,
            progress=not args.no_progress,
            forever=args.forever,
            stopper=stopper,
        )
    except peers.Stopped as exc:
        print(f"appliance produce: {exc}; sent nothing", file=sys.stderr)
        return 1
    print(f"sent {counts.sent}, acknowledged {counts.acknowledged}, failed {counts.failed}")
    for error in counts.errors:
        print(f"  send error: {error}", file=sys.stderr)
    if any("MessageSizeTooLarge" in error for error in counts.errors):
        print(
            "  the broker refused messages as too large: its message.max.bytes (or the topic's "
            "max.message.bytes) must exceed MAX_IMAGE_BYTES x 4/3 plus a few hundred bytes; the "
            "appliance's brokers take 16 MiB",
            file=sys.stderr,
        )
    return 0 if counts.failed == 0 and counts.acknowledged == counts.sent else 1
