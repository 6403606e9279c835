"""A broker that takes connections but is too loaded to answer: clients wait for it, not crash."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest
from kafka.errors import NoBrokersAvailable

from appliance.pipeline import kafkaio, peers

from .harness import Relay, wait_for

pytestmark = pytest.mark.integration


def test_a_client_is_made_once_a_silent_broker_answers(settings, caplog) -> None:
    kafkaio.ensure_topics(settings)
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].rpartition(":")
    relay = Relay((host, int(port)), hold=True).start()
    slow = dataclasses.replace(settings, kafka_bootstrap_servers=f"127.0.0.1:{relay.port}")
    try:
        # The fault, for real: kafka-python's constructor gives up on a broker that does not
        # answer its version probe within two seconds.
        with pytest.raises(NoBrokersAvailable):
            kafkaio.make_producer(slow)
        caplog.set_level(logging.WARNING, logger="appliance.pipeline.peers")
        made: dict[str, object] = {}
        stopper = kafkaio.Stopper()
        maker = threading.Thread(
            target=lambda: made.update(
                producer=peers.kafka_client(slow, stopper, lambda: kafkaio.make_producer(slow))
            )
        )
        maker.start()
        waiting = f"waiting for Kafka at 127.0.0.1:{relay.port}"
        wait_for(lambda: caplog.text.count(waiting) >= 2, 60, "two logged tries")
        assert maker.is_alive()
        relay.release()
        maker.join(60)
        assert not maker.is_alive(), "still waiting after the broker answered"
        producer = made["producer"]
        sent = producer.send(settings.topic_dlq, key=b"peer-test", value=b"{}").get(timeout=30)
        assert sent.offset >= 0
        producer.close()
    finally:
        relay.close()
