"""Waiting for a peer at start-up: the broker, MongoDB, the inference server.

On a VM the peers boot in any order and a JVM under load can take minutes to listen. A component
whose peer is not up yet waits and says, in its log (the unit's journal), which peer at which
address it is waiting for, instead of exiting and leaving systemd to give up on a crash loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import requests
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from appliance.config import Settings
from appliance.pipeline import kafkaio

log = logging.getLogger(__name__)
T = TypeVar("T")


_KAFKA_RETRYABLE = (kafkaio.KafkaError, OSError)


class Stopped(Exception):
    """Asked to stop while still waiting for a peer."""


def wait_for(
    peer: str,
    address: str,
    attempt: Callable[[], T],
    retryable: tuple[type[BaseException], ...],
    stopper: kafkaio.Stopper,
    max_backoff: float = 10.0,
) -> T:
    """Call ``attempt`` until it succeeds; log each failure with the peer's name and address.

    Raises :class:`Stopped` if the stopper fires first; any error not in ``retryable`` propagates.
    """
    start = time.monotonic()
    delay = 1.0
    tries = 0
    while True:
        try:
            result = attempt()
        except retryable as exc:
            tries += 1
            log.warning(
                "waiting for %s at %s (%.0f s, try %d): %s: %s",
                peer,
                address,
                time.monotonic() - start,
                tries,
                exc.__class__.__name__,
                exc,
            )
            if stopper.event.wait(delay):
                raise Stopped(f"stopped while waiting for {peer} at {address}") from None
            delay = min(delay * 2, max_backoff)
            continue
        if tries:
            log.info("%s at %s answered after %.0f s", peer, address, time.monotonic() - start)
        return result


def mongodb_address(uri: str) -> str:
    """host:port list of a MongoDB URI, without the credentials (they never go to a log)."""
    try:
        nodes = parse_uri(uri)["nodelist"]
    except (PyMongoError, ValueError):
        return "(MONGODB_URI, unparsable)"
    return ",".join(f"{host}:{port}" for host, port in nodes)


def wait_for_mongodb(client: MongoClient, uri: str, stopper: kafkaio.Stopper) -> None:
    wait_for(
        "MongoDB",
        mongodb_address(uri),
        lambda: client.admin.command("ping"),
        (PyMongoError,),
        stopper,
    )


def wait_for_http(peer: str, url: str, stopper: kafkaio.Stopper) -> None:
    """Until ``url`` answers 200 (the inference server's /healthz once its model is loaded)."""

    def healthy() -> None:
        response = requests.get(url, timeout=5)
        if response.status_code != 200:
            raise ConnectionError(f"HTTP {response.status_code}")

    wait_for(peer, url, healthy, (requests.RequestException, ConnectionError), stopper)


def wait_for_kafka(settings: Settings, stopper: kafkaio.Stopper) -> None:
    """Until the broker answers and the pipeline's topics exist (creating the missing ones)."""
    wait_for(
        "Kafka",
        settings.kafka_bootstrap_servers,
        lambda: kafkaio.ensure_topics(settings),
        _KAFKA_RETRYABLE,
        stopper,
    )


def kafka_client(settings: Settings, stopper: kafkaio.Stopper, make: Callable[[], T]) -> T:
    """``make()`` (a Kafka client's constructor) until it succeeds.

    A client's constructor asks the broker for its API versions and gives up after two seconds
    (NoBrokersAvailable): a broker that answered :func:`wait_for_kafka` a moment ago can still be
    too loaded to answer that in time, as a JVM still starting under emulation is.
    """
    return wait_for("Kafka", settings.kafka_bootstrap_servers, make, _KAFKA_RETRYABLE, stopper)
