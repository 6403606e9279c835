"""Waiting for a peer: the log names it and its address, never its credentials; a stop ends it."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from appliance.config import Settings
from appliance.pipeline import kafkaio, peers


def test_waits_naming_the_peer_until_it_answers(caplog):
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("connection refused")
        return "pong"

    with caplog.at_level(logging.INFO, logger="appliance.pipeline.peers"):
        result = peers.wait_for(
            "MongoDB", "10.0.0.10:27017", attempt, (OSError,), kafkaio.Stopper(), max_backoff=0.01
        )
    assert result == "pong" and len(calls) == 3
    waiting = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(waiting) == 2
    assert all(m.startswith("waiting for MongoDB at 10.0.0.10:27017") for m in waiting)
    assert "ConnectionRefusedError: connection refused" in waiting[0]
    assert "answered after" in caplog.records[-1].getMessage()


def test_an_error_that_is_no_outage_is_not_waited_on():
    def attempt() -> None:
        raise ValueError("bad setting")

    with pytest.raises(ValueError, match="bad setting"):
        peers.wait_for("Kafka", "k:9092", attempt, (OSError,), kafkaio.Stopper())


def test_a_stop_ends_the_wait():
    stopper = kafkaio.Stopper()
    threading.Timer(0.2, stopper.event.set).start()

    def attempt() -> None:
        raise OSError("unreachable")

    with pytest.raises(peers.Stopped, match="while waiting for Kafka at k:9092"):
        peers.wait_for("Kafka", "k:9092", attempt, (OSError,), stopper)


def test_mongodb_address_hides_the_credentials():
    uri = "mongodb://app:s3cret@10.0.0.10:27017,10.0.0.11:27018/?authSource=admin"
    assert peers.mongodb_address(uri) == "10.0.0.10:27017,10.0.0.11:27018"
    assert "s3cret" not in peers.mongodb_address("mongodb://app:s3cret@[bad")


def test_kafka_that_is_not_there_is_waited_for_by_address(caplog):
    """A real socket: a port on loopback where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(kafka_bootstrap_servers=f"127.0.0.1:{port}")
    stopper = kafkaio.Stopper()
    threading.Timer(3.0, stopper.event.set).start()
    with (
        caplog.at_level(logging.WARNING, logger="appliance.pipeline.peers"),
        pytest.raises(peers.Stopped),
    ):
        peers.wait_for_kafka(settings, stopper)
    assert any(f"waiting for Kafka at 127.0.0.1:{port}" in r.getMessage() for r in caplog.records)
