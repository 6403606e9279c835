"""The whole appliance across four hosts: each host, the traffic between them, the pipeline, and
faults while images flow. Runs against a deployment `appliance cloud up` made (see conftest.py);
the tests run in file order and leave the deployment up and consistent.

Expected counts come from the cameras themselves: each run of the producer's unit ends with
"sent S, acknowledged A, failed F" in its journal. What Kafka acknowledged must be stored and
labelled, once; what it did not (F, during a broker outage) was never accepted, and is reported.
"""

from __future__ import annotations

import hashlib
import shlex
import time

import pytest
import testinfra

from appliance.cloud import credentials, pki, topology, transport
from appliance.model import CIFAR10_CLASSES
from tests import kafka_probe, mongodb_probe
from tests.cluster.driver import Machine, ProducerRun
from tests.integration.test_pipeline import DOCUMENT_FIELDS

pytestmark = pytest.mark.timeout(3600)
PORTS = {
    "mongodb": topology.MONGODB_PORT,
    "ml-server": topology.ML_SERVER_PORT,
    "kafka": topology.KAFKA_PORT,
}
STABLE_WINDOW_S = 30
# Under software emulation a broker takes minutes to boot and listen.
BOOT_TIMEOUT_S = 1500
PRODUCER = "appliance-producer.service"
CONSUMER_DB = "appliance-consumer-db.service"
# What the DB consumer logs each time a write meets MongoDB away (kafkaio.retry_paused).
WRITE_FAILED = "MongoDB bulk write failed"


# -- helpers --------------------------------------------------------------------------------------


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


# -- each host ------------------------------------------------------------------------------------


def test_every_unit_stays_active_with_a_healthy_container(machines):
    """Active and healthy now, and still so with no restart over a 30 s window (NRestarts)."""
    before = {
        (m.role, unit): int(m.unit_property(unit, "NRestarts"))
        for m in machines.values()
        for unit in topology.ROLES[m.role].units
    }
    deadline = time.monotonic() + STABLE_WINDOW_S
    while time.monotonic() < deadline:
        for m in machines.values():
            for unit in topology.ROLES[m.role].units:
                assert m.unit_property(unit, "ActiveState") == "active", f"{m.role}: {unit}"
        time.sleep(5)
    for m in machines.values():
        detail = m.wait_healthy(60)
        for unit in topology.ROLES[m.role].units:
            after = int(m.unit_property(unit, "NRestarts"))
            assert after == before[(m.role, unit)], f"{m.role}: {unit} restarted ({detail})"


@pytest.mark.parametrize("role", list(PORTS))
def test_service_listens_where_peers_reach_it(machines, role):
    machine = machines[role]
    addresses = machine.wait_for_open_port(PORTS[role], 60)
    assert {"0.0.0.0", "*", "[::]", machine.address} & set(addresses), addresses


@pytest.mark.parametrize("role", list(topology.ROLES))
def test_settings_file_is_root_only(cloud, role):
    url, options = cloud.testinfra_host(role)
    host = testinfra.get_host(url, **options)
    settings = host.file(topology.ENV_FILE)
    assert settings.exists
    assert (settings.user, settings.group, settings.mode) == ("root", "root", 0o600)


# What each unit's container is handed from /etc/appliance/tls (the roles' *_tls_files), and as
# which uid: the images' own users.
TLS_FILES = {
    "appliance-kafka.service": (["ca.pem", "kafka.pem"], 10001),
    "appliance-consumer-db.service": (["ca.pem"], 10001),
    "appliance-consumer-inference.service": (["ca.pem"], 10001),
    "appliance-producer.service": (["ca.pem"], 10001),
    "appliance-mongodb.service": (["ca.pem", "mongodb.pem"], 999),
}


@pytest.mark.parametrize("role", list(topology.ROLES))
def test_tls_files_are_root_only_and_each_container_gets_a_copy_of_its_own(cloud, role):
    url, options = cloud.testinfra_host(role)
    host = testinfra.get_host(url, **options)
    units = [u for u in topology.ROLES[role].units if u in TLS_FILES]
    wanted = sorted({name for u in units for name in TLS_FILES[u][0]})
    folder = host.file(transport.TLS_DIR)
    assert (sorted(folder.listdir()) if folder.exists else []) == wanted
    for name in wanted:
        f = host.file(f"{transport.TLS_DIR}/{name}")
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), name
    for unit in units:
        names, uid = TLS_FILES[unit]
        for name in names:
            copy = host.file(f"/run/appliance/tls/{unit}/{name}")
            assert (copy.uid, copy.mode) == (uid, 0o400), f"{unit}: {name}"
            assert copy.content == host.file(f"{transport.TLS_DIR}/{name}").content


def test_no_secret_shows_in_a_process_list(cloud, machines):
    """The passwords reach the containers through files and their environment, never argv."""
    secrets = [
        transport.of_local_cloud(cloud.root).kafka_password,
        credentials.of_local_cloud(cloud.root).mongodb_password,
    ]
    # What shows that the listing reaches into the host's containers: their servers' processes.
    servers = {"kafka": ("kafka.Kafka",), "mongodb": ("ferretdb", "mongod"),
               "ml-server": ("gunicorn",), "producer": ("dockerd",)}  # fmt: skip
    for m in machines.values():
        listing = m.succeed("ps -eo args")
        assert any(name in listing for name in servers[m.role]), (m.role, listing)
        assert not any(s in listing for s in secrets), m.role


def test_ssh_host_keys_were_made_at_this_boot(machines, is_vm):
    if not is_vm:
        pytest.skip("containers have no cloud-init: the VMs check this")
    fingerprints = {}
    for m in machines.values():
        boot = int(m.succeed("awk '/^btime/ {print $2}' /proc/stat"))
        made = int(m.succeed("stat -c %Y /etc/ssh/ssh_host_ed25519_key"))
        assert made >= boot, f"{m.role}: host key older than this boot: baked into the image"
        fingerprints[m.role] = m.succeed(
            "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
        ).split()[1]
    assert len(set(fingerprints.values())) == len(fingerprints), fingerprints


# -- across hosts ---------------------------------------------------------------------------------


def test_hosts_reach_their_peers_on_the_private_network(machines):
    producer, kafka = machines["producer"], machines["kafka"]
    assert producer.reaches(kafka.address, topology.KAFKA_PORT)
    assert kafka.reaches(machines["mongodb"].address, topology.MONGODB_PORT)
    assert kafka.reaches(machines["ml-server"].address, topology.ML_SERVER_PORT)


def test_mongodb_refuses_a_peer_without_the_deployments_password(machines):
    """From the kafka host, by the consumers' own path: no login, then a wrong password."""
    kafka, mongodb = machines["kafka"], machines["mongodb"]
    script = mongodb_probe.refusal_script(
        mongodb.address, topology.MONGODB_PORT, tls_ca_file=f"{transport.TLS_DIR}/ca.pem"
    )
    out = kafka.succeed(f"docker exec appliance-consumer-db python -c {shlex.quote(script)}", 120)
    assert out.strip().splitlines()[-3:] == mongodb_probe.EXPECTED_TLS


def test_kafka_refuses_a_peer_without_the_deployments_login(machines):
    """From the producer host, by the cameras' own path: no login, a wrong password and a CA
    other than the deployment's are refused; the deployment's login gets a message acknowledged."""
    other_ca = pki.new_authority("another deployment's CA").cert_pem.decode()
    out = run_in_producer_image(
        machines["producer"], kafka_probe.refusal_script(other_ca, "cluster-login-probe")
    )
    # The probe's verdicts; its stderr (each refusal's exception type) comes with them here.
    verdicts = [line for line in out.splitlines() if line.endswith((": refused", ": sent"))]
    assert verdicts == kafka_probe.EXPECTED, out


def test_broker_advertises_its_private_address_to_the_cameras(machines):
    """A metadata request from the producer host names the kafka host's private address."""
    producer, kafka = machines["producer"], machines["kafka"]
    script = (
        "from kafka import KafkaAdminClient; from appliance.config import Settings; "
        "a = KafkaAdminClient(**Settings.from_env().kafka_options()); "
        "print(*[b['host'] + ':' + str(b['port']) for b in a.describe_cluster()['brokers']])"
    )
    out = run_in_producer_image(producer, script)
    assert out.strip().splitlines()[-1] == f"{kafka.address}:{topology.KAFKA_PORT}"


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
