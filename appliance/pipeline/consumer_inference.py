"""`appliance consume-inference`: label every image through the inference server.

Stateless: reads `images`, posts them in batches to ``/predict/batch`` and publishes one message per
image to `predictions`, committing only after those are acknowledged. While the server is down or
answers 5xx it retries with backoff, skipping nothing. Messages that fail validation are left to the
DB consumer, which dead-letters them (so each bad message is in the DLQ once); an image the server
itself rejects is dead-lettered here with the server's reason.
"""

from __future__ import annotations

import argparse
import base64
import logging
import time
from dataclasses import dataclass
from typing import NamedTuple

import requests
from kafka.consumer.fetcher import ConsumerRecord

from appliance.config import Settings
from appliance.contract import BadMessage, encode_prediction_message, parse_image_message
from appliance.pipeline import kafkaio, peers

log = logging.getLogger(__name__)
NAME = "consume-inference"


class ServerUnavailable(Exception):
    """Unreachable, timed out or answered 5xx: worth retrying, never a reason to skip."""


@dataclass
class Labelled:
    record: ConsumerRecord
    image_id: str
    label: str
    confidence: float
    model: str


@dataclass
class Stats:
    labelled: int = 0
    skipped_invalid: int = 0
    dead_lettered: int = 0
    requests: int = 0


class Item(NamedTuple):
    """One image to label: its record (committed after), id, base64 file and true class if sent."""

    record: ConsumerRecord
    image_id: str
    image_b64: str
    ground_truth: str | None = None


class InferenceClient:
    """POSTs to ``/predict/batch``; separates bad input (4xx) from an unavailable server."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/") + "/predict/batch"
        self.timeout = timeout
        self.session = requests.Session()

    def predict(
        self, images: list[str], ground_truth: list[str | None] | None = None
    ) -> list[dict] | tuple[int | None, str]:
        """Predictions, or (index of the rejected image or None, server's reason) for a 4xx.

        ``ground_truth``: the images' true classes where known; the server counts how many of
        its labels match, per model id, in /metrics.
        """
        body: dict[str, object] = {"images": images}
        if ground_truth and any(ground_truth):
            body["ground_truth"] = ground_truth
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ServerUnavailable(f"{self.url}: {exc.__class__.__name__}: {exc}") from None
        if response.status_code >= 500:
            raise ServerUnavailable(f"{self.url}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise ServerUnavailable(f"{self.url}: HTTP {response.status_code}, not JSON") from None
        if response.status_code != 200:
            index = body.get("index") if isinstance(body, dict) else None
            reason = body.get("error") if isinstance(body, dict) else None
            return (
                index if isinstance(index, int) else None,
                f"rejected by inference server (HTTP {response.status_code}): {reason}",
            )
        predictions = body.get("predictions") if isinstance(body, dict) else None
        if not isinstance(predictions, list) or len(predictions) != len(images):
            raise ServerUnavailable(f"{self.url}: malformed answer without one prediction each")
        return predictions


def label_batch(
    client: InferenceClient,
    items: list[Item],
) -> tuple[list[Labelled], list[tuple[ConsumerRecord, str]]]:
    """Label the items; returns the labels and the rejected records.

    A 4xx naming one image removes just that image; one naming none splits the batch, so a
    single bad image can never hold back the good ones.
    """
    labelled: list[Labelled] = []
    rejected: list[tuple[ConsumerRecord, str]] = []
    pending = [items]
    while pending:
        chunk = pending.pop()
        if not chunk:
            continue
        answer = client.predict([i.image_b64 for i in chunk], [i.ground_truth for i in chunk])
        if isinstance(answer, list):
            for item, p in zip(chunk, answer, strict=True):
                labelled.append(
                    Labelled(
                        item.record, item.image_id, p["label"], float(p["confidence"]), p["model"]
                    )
                )
            continue
        index, reason = answer
        if index is not None and 0 <= index < len(chunk):
            rejected.append((chunk[index][0], reason))
            pending.append(chunk[:index] + chunk[index + 1 :])
        elif len(chunk) == 1:
            rejected.append((chunk[0][0], reason))
        else:
            half = len(chunk) // 2
            pending.extend([chunk[:half], chunk[half:]])
    return labelled, rejected


def consume(settings: Settings, stopper: kafkaio.Stopper, idle_exit: float | None = None) -> Stats:
    """Label until stopped (or idle for ``idle_exit`` seconds); waits for the broker first.

    The server is awaited per batch (retry_paused), so a server that comes and goes holds
    back labels, never the consumer's place in its group.
    """
    peers.wait_for_kafka(settings, stopper)
    consumer = peers.kafka_client(
        settings,
        stopper,
        lambda: kafkaio.make_consumer(
            settings,
            [settings.topic_images],
            settings.group_inference,
            settings.inference_batch_size,
        ),
    )
    producer = peers.kafka_client(settings, stopper, lambda: kafkaio.make_producer(settings))
    client = InferenceClient(settings.inference_url)
    total = Stats()
    log.info(
        "labelling %s through %s into %s",
        settings.topic_images,
        settings.inference_url,
        settings.topic_predictions,
    )
    try:
        for records in kafkaio.batches(consumer, settings.inference_batch_size, stopper, idle_exit):
            items: list[Item] = []
            for record in records:
                try:
                    msg = parse_image_message(
                        record.value, settings.max_image_bytes, settings.max_image_pixels
                    )
                except BadMessage as exc:
                    log.info(
                        "skipping %s[%d]@%d (the DB consumer dead-letters it): %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        exc,
                    )
                    total.skipped_invalid += 1
                    continue
                image_b64 = base64.b64encode(msg.image).decode()
                items.append(Item(record, msg.image_id, image_b64, msg.ground_truth))
            result = kafkaio.retry_paused(
                consumer,
                lambda items=items: label_batch(client, items),
                (ServerUnavailable,),
                "inference request",
                stopper,
            )
            if result is None:
                break  # stopping while the server is down: nothing committed, nothing lost
            labelled, rejected = result
            now = time.time()
            futures = []
            for item in labelled:
                key, value = encode_prediction_message(
                    item.image_id, item.label, item.confidence, item.model, now
                )
                futures.append(
                    producer.send(settings.topic_predictions, key=key.encode(), value=value)
                )
            futures += [
                kafkaio.send_to_dlq(producer, settings.topic_dlq, r, reason, NAME)
                for r, reason in rejected
            ]
            kafkaio.wait_all(futures)
            kafkaio.commit(consumer, records)
            total.labelled += len(labelled)
            total.dead_lettered += len(rejected)
            total.requests += 1
    finally:
        consumer.close(autocommit=False)
        producer.close()
    log.info("stopped: %s", total)
    return total


add_arguments = kafkaio.add_consumer_arguments


def run(args: argparse.Namespace) -> int:
    try:
        consume(Settings.from_env(), kafkaio.Stopper().install(), args.exit_when_idle)
    except peers.Stopped as exc:
        log.info("%s", exc)
    return 0
