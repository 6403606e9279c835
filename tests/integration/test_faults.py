"""The fault matrix: each part of the pipeline killed with SIGKILL under steady load (4 cameras x
5 img/s), then started again. After recovery, what Kafka acknowledged is stored and labelled, once.

The broker and the database are the local services of `appliance services` (started again by
`appliance services up`, on their data); the server and the consumers are this test's own. At the
end the module prints a table: victim, downtime, images, lost, duplicated, time to catch up.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from appliance.config import Settings
from appliance.ops import services as devservices
from appliance.ops.counts import measure
from appliance.pipeline import producer
from appliance.server.process import ServerProcess

from .harness import PYTHON, ConsumerProcess, settings_env, wait_for

pytestmark = pytest.mark.integration
CAMERAS, RATE = 4, 5.0  # 20 img/s in all
COUNT = 200  # 10 s of load
KILL_AFTER_STORED = 40
DOWN_S = 5.0
CATCH_UP_TIMEOUT_S = 240.0


@dataclass
class Row:
    victim: str
    downtime_s: float  # from the kill until it was started again (a camera: until it exited)
    images: int  # acknowledged by Kafka
    unacknowledged: int  # sent, but never acknowledged (the cameras say so)
    lost: int  # acknowledged, not stored and labelled
    duplicated: int  # one camera shot stored more than once
    catch_up_s: float  # from the cameras' last send until everything is stored and labelled


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest) -> Iterator[list[Row]]:
    rows: list[Row] = []
    yield rows
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not rows:
        return
    with capture.global_and_fixture_disabled():  # the table is the module's result: always shown
        print_table(reporter, rows)


def print_table(reporter, rows: list[Row]) -> None:
    reporter.write_line("")
    reporter.write_line(
        f"{'victim':<20}{'down s':>8}{'images':>8}{'unacked':>9}{'lost':>6}{'dup':>5}"
        f"{'catch-up s':>12}"
    )
    for r in rows:
        reporter.write_line(
            f"{r.victim:<20}{r.downtime_s:>8.1f}{r.images:>8}{r.unacknowledged:>9}{r.lost:>6}"
            f"{r.duplicated:>5}{r.catch_up_s:>12.1f}"
        )


@dataclass
class Pipeline:
    """The consumers and the server of one test, on the shared broker and database."""

    settings: Settings
    start_consumer: Callable[[str, Settings], ConsumerProcess]
    server: ServerProcess
    db: ConsumerProcess | None = None
    inference: ConsumerProcess | None = None

    def start(self) -> Pipeline:
        self.db = self.start_consumer("consume-db", self.settings)
        self.inference = self.start_consumer("consume-inference", self.settings)
        return self


def local_services() -> devservices.ServicesConfig:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("MONGODB_URI"):
        pytest.skip("the broker and the database are not the local services: cannot kill them")
    return devservices.ServicesConfig.from_env()


def kill_service(name: str) -> Callable[[Pipeline], None]:
    def kill(_: Pipeline) -> None:
        config = local_services()
        (entry,) = [s for s in devservices.status(config) if s.name == name]
        assert entry.pid is not None and entry.running
        os.killpg(entry.pid, signal.SIGKILL)
        wait_for(
            lambda: not any(s.running for s in devservices.status(config) if s.name == name),
            30,
            f"{name} gone",
        )

    return kill


def restart_services(_: Pipeline) -> None:
    devservices.up(local_services())


def kill_consumers(*which: str) -> Callable[[Pipeline], None]:
    def kill(p: Pipeline) -> None:
        for role in which:
            getattr(p, role).kill(signal.SIGKILL)

    return kill


def restart_consumers(*which: str) -> Callable[[Pipeline], None]:
    commands = {"db": "consume-db", "inference": "consume-inference"}

    def restart(p: Pipeline) -> None:
        for role in which:
            setattr(p, role, p.start_consumer(commands[role], p.settings))

    return restart


def kill_server(p: Pipeline) -> None:
    """SIGKILL to the master and every worker: the server's whole process group."""
    assert p.server.proc is not None
    os.killpg(p.server.proc.pid, signal.SIGKILL)
    p.server.proc.wait(30)


def restart_server(p: Pipeline) -> None:
    p.server.start()  # the same port, so the inference consumer's URL still holds


VICTIMS: dict[str, tuple[Callable, Callable]] = {
    "broker": (kill_service("kafka"), restart_services),
    "database": (kill_service("mongodb"), restart_services),
    "inference server": (kill_server, restart_server),
    "DB consumer": (kill_consumers("db"), restart_consumers("db")),
    "inference consumer": (kill_consumers("inference"), restart_consumers("inference")),
    "both consumers": (
        kill_consumers("db", "inference"),
        restart_consumers("db", "inference"),
    ),
}


def duplicated(collection) -> int:
    shots = [(d["device_id"], d["timestamp"]) for d in collection.find({}, {"image": 0})]
    return len(shots) - len(set(shots))


def wait_caught_up(settings: Settings, collection, expected: int) -> float:
    """Seconds until ``expected`` documents are stored and labelled and no group lags."""
    began = time.monotonic()

    def done() -> bool:
        stored = collection.count_documents({})
        labelled = collection.count_documents({"prediction": {"$exists": True}})
        if stored < expected or labelled < stored:
            return False
        counts = measure(settings)
        return not counts.errors and not any(counts.lag.values())

    wait_for(done, CATCH_UP_TIMEOUT_S, f"{expected} stored and labelled, no lag", interval=1)
    return time.monotonic() - began


@pytest.mark.parametrize("victim", list(VICTIMS))
def test_a_killed_part_loses_and_duplicates_nothing(
    victim, settings, server_factory, inference_server, consumers, collection, cifar_test_samples,
    table,
):  # fmt: skip
    kill, restart = VICTIMS[victim]
    # The shared server, but for the test that kills one: that one gets its own.
    server = server_factory().start() if victim == "inference server" else inference_server
    pipeline = Pipeline(dataclasses.replace(settings, inference_url=server.url), consumers, server)
    pipeline.start()
    samples = cifar_test_samples[:COUNT]
    result: dict = {}
    cameras = threading.Thread(
        target=lambda: result.update(
            counts=producer.produce(
                pipeline.settings, samples, devices=CAMERAS, rate=RATE, progress=False
            )
        )
    )
    cameras.start()
    wait_for(lambda: collection.count_documents({}) >= KILL_AFTER_STORED, 120, "load flowing")
    killed = time.monotonic()
    kill(pipeline)
    time.sleep(DOWN_S)
    restart(pipeline)
    restarted = time.monotonic()
    cameras.join(300)
    assert not cameras.is_alive(), "the cameras never finished"
    counts = result["counts"]
    assert counts.sent == COUNT
    catch_up = wait_caught_up(pipeline.settings, collection, counts.acknowledged)
    time.sleep(3)  # a late duplicate would land now
    stored = collection.count_documents({})
    labelled = collection.count_documents({"prediction": {"$exists": True}})
    row = Row(
        victim,
        restarted - killed,
        counts.acknowledged,
        counts.sent - counts.acknowledged,
        max(0, counts.acknowledged - min(stored, labelled)),
        duplicated(collection),
        catch_up,
    )
    table.append(row)
    assert (row.lost, row.duplicated) == (0, 0), row
    # Everything stored was acknowledged or at least sent; nothing appears from nowhere.
    assert counts.acknowledged <= stored <= counts.sent, (stored, counts)
    assert stored == labelled
    assert pipeline.db is not None and pipeline.db.alive
    assert pipeline.inference is not None and pipeline.inference.alive


SUMMARY = re.compile(r"sent (\d+), acknowledged (\d+), failed (\d+)")


def test_a_camera_killed_mid_run_says_what_was_not_acknowledged(
    settings, consumers, inference_server, collection, shared_archive, table
):
    """The producer stopped by a signal mid-run: it flushes, prints its counts, and every image it
    counts as acknowledged is stored and labelled."""
    served = dataclasses.replace(settings, inference_url=inference_server.url)
    consumers("consume-db", served)
    consumers("consume-inference", served)
    camera = subprocess.Popen(
        [PYTHON, "-m", "appliance", "produce", "--source", str(shared_archive), "--devices",
         str(CAMERAS), "--rate", str(RATE), "--count", str(COUNT), "--no-progress"],
        env=settings_env(served), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: collection.count_documents({}) >= KILL_AFTER_STORED, 180, "load flowing")
        killed = time.monotonic()
        camera.send_signal(signal.SIGTERM)
        out, err = camera.communicate(timeout=120)
        stopped = time.monotonic()
    finally:
        if camera.poll() is None:
            camera.kill()
    match = SUMMARY.search(out)
    assert match, f"no counts printed:\n{out}\n{err[-2000:]}"
    sent, acknowledged, failed = map(int, match.groups())
    assert 0 < sent < COUNT, "the signal must land mid-run"
    catch_up = wait_caught_up(served, collection, acknowledged)
    time.sleep(3)
    stored = collection.count_documents({})
    row = Row("camera (SIGTERM)", stopped - killed, acknowledged, sent - acknowledged,
              max(0, acknowledged - stored), duplicated(collection), catch_up)  # fmt: skip
    table.append(row)
    assert failed == 0 and acknowledged == sent, (sent, acknowledged, failed)
    assert stored == acknowledged
    assert (row.lost, row.duplicated) == (0, 0), row


def test_cameras_send_again_after_an_outage_longer_than_the_delivery_timeout(
    settings, monkeypatch
):  # fmt: skip
    """kafka-python stops sending for good once batches expired while the broker was away; the
    cameras replace their client and go on (the kafka VM's power loss found this)."""
    import json

    from kafka import KafkaConsumer, TopicPartition

    from appliance.datasets import Sample
    from appliance.pipeline import kafkaio

    make_producer = kafkaio.make_producer
    # The default delivery timeout is 2 minutes; 4 s makes the same expiry in a short outage.
    monkeypatch.setattr(
        kafkaio, "make_producer",
        lambda s, **kw: make_producer(s, delivery_timeout_ms=4000, request_timeout_ms=2000, **kw),
    )  # fmt: skip
    samples = [Sample(f"s{i}", bytes([i]) * 100, "cat") for i in range(50)]
    result: dict = {}

    def send() -> None:
        result["counts"] = producer.produce(
            settings, samples, devices=2, rate=5, duration=55, progress=False
        )

    cameras = threading.Thread(target=send)
    cameras.start()
    time.sleep(5)
    kill_service("kafka")(None)  # type: ignore[arg-type]
    time.sleep(10)  # past the delivery timeout: what was sent meanwhile expires
    restart_services(None)  # type: ignore[arg-type]
    back = time.time()
    cameras.join(120)
    assert not cameras.is_alive()
    counts = result["counts"]
    assert counts.failed > 0, "no send expired: the outage was too short to test anything"
    assert counts.acknowledged + counts.failed == counts.sent, counts

    reader = KafkaConsumer(**settings.kafka_options())
    try:
        parts = [TopicPartition(settings.topic_images, p)
                 for p in reader.partitions_for_topic(settings.topic_images)]  # fmt: skip
        ends, starts = reader.end_offsets(parts), reader.beginning_offsets(parts)
        # All it acknowledged is there; a send it counts as failed may be there too (written,
        # its answer lost with the broker), never more than it sent.
        held = sum(ends[tp] - starts[tp] for tp in parts)
        assert counts.acknowledged <= held <= counts.sent, (held, counts)
        reader.assign(parts)
        for tp in parts:
            reader.seek(tp, max(starts[tp], ends[tp] - 1))
        last = [json.loads(r.value)["timestamp"] for rs in reader.poll(10_000).values() for r in rs]
    finally:
        reader.close()
    # Images sent well after the broker came back are in Kafka: the cameras did not stall.
    assert max(last) > back + 5, (max(last) - back, counts)
