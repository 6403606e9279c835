"""`appliance services` for real: Kafka and the MongoDB-protocol server up, used, and down again.

Runs on free ports and in its own state directory, so a stack started with `make services` on the
default ports keeps running. The jars and the FerretDB binary come from the user's cache (the first
run fetches and builds them: minutes).
"""

from __future__ import annotations

import io
import os
import shlex
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from pymongo import MongoClient, UpdateOne

from appliance.cloud import pki
from appliance.config import Settings
from appliance.ops import services as ds
from appliance.ops.services import lifecycle

pytestmark = pytest.mark.integration


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out; held together so the three differ."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class Stack:
    config: ds.ServicesConfig
    endpoints: ds.Endpoints
    output: str  # what `up` printed
    seconds: float


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    kafka, controller, mongodb, internal = free_ports(4)
    config = ds.ServicesConfig(
        kafka_port=kafka,
        kafka_controller_port=controller,
        mongodb_port=mongodb,
        kafka_internal_port=internal,
        state_dir=tmp_path_factory.mktemp("services") / "state",
    )
    try:
        ds.find_toolchain(config)
    except ds.MissingToolError as exc:
        pytest.skip(str(exc))
    out = io.StringIO()
    start = time.monotonic()
    try:
        endpoints = ds.up(config, out=out)
    finally:
        sys.stderr.write(out.getvalue())  # shown by pytest when something fails
    yield Stack(config, endpoints, out.getvalue(), time.monotonic() - start)
    ds.down(config, out=io.StringIO())


def cli_env(config: ds.ServicesConfig) -> dict[str, str]:
    return {
        **os.environ,
        ds.ENV_KAFKA_PORT: str(config.kafka_port),
        ds.ENV_KAFKA_CONTROLLER_PORT: str(config.kafka_controller_port),
        ds.ENV_MONGODB_PORT: str(config.mongodb_port),
        ds.ENV_KAFKA_INTERNAL_PORT: str(config.kafka_internal_port),
        ds.ENV_STATE_DIR: str(config.state_dir),
    }


def test_up_returns_the_endpoints_on_the_ports_asked_for(stack: Stack) -> None:
    config = stack.config
    assert stack.endpoints.kafka_bootstrap_servers == f"127.0.0.1:{config.kafka_port}"
    password = config.password_file.read_text().strip()
    assert stack.endpoints.mongodb_uri == (
        f"mongodb://appliance:{password}@127.0.0.1:{config.mongodb_port}/?authSource=admin"
        f"&tls=true&tlsCAFile={config.ca_file}"
    )
    assert "services up in" in stack.output
    assert (config.state_dir / ds.STATE_FILE).exists()
    assert (config.kafka_dir / "kafka.log").stat().st_size > 0


def test_status_reports_both_services_healthy(stack: Stack) -> None:
    statuses = {entry.name: entry for entry in ds.status(stack.config)}
    assert set(statuses) == {"kafka", "mongodb"}
    for entry in statuses.values():
        assert entry.running and entry.healthy, entry
        assert entry.pid is not None and entry.pid > 0
    assert statuses["kafka"].address == stack.endpoints.kafka_bootstrap_servers
    assert ds.is_running(stack.config)


def test_status_command_prints_pid_address_and_health(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "services", "status"],
        env=cli_env(stack.config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()[:2]
    # Then what flows through them, read from these services, and where the server should be.
    flow = result.stdout.splitlines()[2:]
    assert flow[0].startswith("images: ") and "stored" in flow[0], result.stdout
    assert not [line for line in flow if line.startswith("  (")], result.stdout  # no errors
    assert flow[-1].startswith("inference server http://"), result.stdout
    ports = {"kafka": stack.config.kafka_port, "mongodb": stack.config.mongodb_port}
    for line, name in zip(sorted(lines), sorted(ports), strict=True):
        fields = line.split()
        assert fields[0] == name
        assert fields[1] == "pid" and fields[2].isdigit()
        assert fields[3] == f"127.0.0.1:{ports[name]}"
        assert fields[4] == "healthy"


def test_up_again_is_a_no_op_that_says_so(stack: Stack) -> None:
    before = [entry.pid for entry in ds.status(stack.config)]
    out = io.StringIO()
    assert ds.up(stack.config, out=out) == stack.endpoints
    assert "already running" in out.getvalue()
    assert [entry.pid for entry in ds.status(stack.config)] == before


def test_up_env_prints_exports_for_eval(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "services", "up", "--env"],
        env=cli_env(stack.config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kafka_password = stack.config.kafka_password_file.read_text().strip()
    assert result.stdout.splitlines() == [
        f"export KAFKA_BOOTSTRAP_SERVERS={stack.endpoints.kafka_bootstrap_servers}",
        f"export MONGODB_URI={shlex.quote(stack.endpoints.mongodb_uri)}",
        "export KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        "export KAFKA_USERNAME=appliance",
        f"export KAFKA_PASSWORD={shlex.quote(kafka_password)}",
        f"export KAFKA_CA_FILE={stack.config.ca_file}",
    ]
    # What the shell makes of it: the URI itself, password and all.
    shell = subprocess.run(
        ["bash", "-c", f'eval "{result.stdout}"; printf %s "$MONGODB_URI"'],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert shell.stdout == stack.endpoints.mongodb_uri


def test_another_stack_on_the_same_ports_fails_clearly(stack: Stack, tmp_path: Path) -> None:
    other = ds.ServicesConfig(
        kafka_port=stack.config.kafka_port,
        kafka_controller_port=stack.config.kafka_controller_port,
        mongodb_port=stack.config.mongodb_port,
        kafka_internal_port=stack.config.kafka_internal_port,
        state_dir=tmp_path / "other",
    )
    with pytest.raises(ds.ServiceError, match=rf"port {other.kafka_port} .* already in use"):
        ds.up(other, out=io.StringIO())


def login(stack: Stack) -> dict[str, object]:
    """The stack's clients' options: SASL_SSL, SCRAM-SHA-512, the stack's CA."""
    return stack.endpoints.settings(Settings()).kafka_options()


def test_kafka_round_trips_a_message(stack: Stack) -> None:
    topic = f"devservices-{uuid.uuid4().hex[:8]}"
    assert login(stack)["security_protocol"] == "SASL_SSL"
    producer = KafkaProducer(**login(stack), acks="all")
    try:
        producer.send(topic, key=b"camera-00", value=b"hello").get(timeout=30)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        topic,
        **login(stack),
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        consumer_timeout_ms=30_000,
    )
    try:
        received = next(iter(consumer))
    finally:
        consumer.close()
    assert (received.key, received.value) == (b"camera-00", b"hello")


# What a refused client ends with: Kafka's errors, and the TLS handshake's own (kafka-python lets a
# certificate that fails verification out as ssl.SSLCertVerificationError).
REFUSALS = (KafkaError, ssl.SSLError)


def produced(options: dict[str, object], topic: str) -> str | None:
    """None when a message sent with ``options`` was acknowledged; otherwise the error."""
    try:
        producer = KafkaProducer(
            **options, acks="all", max_block_ms=10_000, api_version_auto_timeout_ms=5000
        )
    except REFUSALS as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        producer.send(topic, key=b"camera-00", value=b"hello").get(timeout=15)
        return None
    except REFUSALS as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        producer.close(timeout=5)


def consumed(options: dict[str, object], topic: str, seconds: float = 15) -> list[bytes] | str:
    """The values read from ``topic`` with ``options`` within ``seconds``, or the error."""
    try:
        consumer = KafkaConsumer(
            topic,
            **options,
            group_id=f"{topic}-{uuid.uuid4().hex[:6]}",
            auto_offset_reset="earliest",
            api_version_auto_timeout_ms=5000,
        )
    except REFUSALS as exc:
        return f"{type(exc).__name__}: {exc}"
    values: list[bytes] = []
    deadline = time.monotonic() + seconds
    try:
        while not values and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                values += [r.value for r in records]
        return values
    except REFUSALS as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        consumer.close()


def test_kafka_refuses_a_client_without_the_stacks_login(stack: Stack, tmp_path: Path) -> None:
    """No credentials, a wrong password, or a CA other than the stack's: no produce, no consume."""
    good = login(stack)
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(pki.new_authority("another deployment's CA").cert_pem)
    cases = {
        "no login": {"bootstrap_servers": good["bootstrap_servers"]},
        "wrong password": {**good, "sasl_plain_password": "not-the-password"},
        "untrusted CA": {**good, "ssl_cafile": str(other_ca)},
    }
    topic = f"devservices-{uuid.uuid4().hex[:8]}"
    assert produced(good, topic) is None  # a message is there to be read, by the right login
    outcomes = {}
    for name, options in cases.items():
        sent, read = produced(options, topic), consumed(options, topic)
        outcomes[name] = (sent, read)
        assert sent is not None, f"{name}: a message was acknowledged"
        assert isinstance(read, str) or read == [], f"{name}: read {read}"
    print(outcomes)
    # In the same time the right login reads it: the refusals are the login's doing.
    assert consumed(good, topic) == [b"hello"]


def test_secrets_and_keys_are_the_owners_only(stack: Stack) -> None:
    config = stack.config
    assert config.tls_dir.stat().st_mode & 0o777 == 0o700
    for path in (config.kafka_password_file, config.password_file, config.ca_file,
                 config.tls_dir / "ca.key", config.kafka_keystore):  # fmt: skip
        assert path.stat().st_mode & 0o777 == 0o600, path
    # The password never reached a command line: not in the broker's, not in the state file's.
    password = config.kafka_password_file.read_text().strip()
    for entry in ds.status(config):
        assert password not in Path(f"/proc/{entry.pid}/cmdline").read_bytes().decode(
            errors="ignore"
        )
    assert not (config.kafka_dir / "scram.properties").exists()


def test_mongodb_upserts_with_set_and_min(stack: Stack) -> None:
    client: MongoClient[dict[str, object]] = MongoClient(
        stack.endpoints.mongodb_uri, serverSelectionTimeoutMS=10_000
    )
    try:
        images = client["devservices_test"]["images"]
        images.insert_one({"_id": "img-1", "device_id": "camera-00", "timestamp": 10.0})
        result = images.bulk_write(
            [
                UpdateOne(
                    {"_id": "img-1"},
                    {"$set": {"prediction": {"label": "cat"}}, "$min": {"labelled_at": 20.0}},
                    upsert=True,
                ),
                UpdateOne(
                    {"_id": "img-2"},
                    {"$set": {"device_id": "camera-01"}, "$min": {"labelled_at": 30.0}},
                    upsert=True,
                ),
                UpdateOne({"_id": "img-2"}, {"$min": {"labelled_at": 25.0}}, upsert=True),
            ],
            ordered=False,
        )
        assert (result.upserted_count, result.matched_count) == (1, 2)
        first = images.find_one({"_id": "img-1"})
        assert first is not None
        assert first["prediction"] == {"label": "cat"}
        assert first["labelled_at"] == 20.0
        assert [doc["labelled_at"] for doc in images.find({"_id": "img-2"})] == [25.0]
        assert images.count_documents({}) == 2
        assert images.count_documents({"prediction.label": "cat"}) == 1
    finally:
        client.drop_database("devservices_test")
        client.close()


def test_mongodb_wants_the_stacks_password_which_stays_private(stack: Stack) -> None:
    from pymongo.errors import OperationFailure

    if not any(s.name == "mongodb" and "FerretDB" in s.detail for s in ds.status(stack.config)):
        pytest.skip("a real mongod serves here, without authentication")
    address = f"127.0.0.1:{stack.config.mongodb_port}"
    password = stack.config.password_file.read_text().strip()
    tls = f"tls=true&tlsCAFile={stack.config.ca_file}"
    refused = {
        f"mongodb://{address}/?{tls}": 13,  # no credentials: "requires authentication"
        f"mongodb://appliance:not-{password}@{address}/?authSource=admin&{tls}": 18,  # wrong one
    }
    for uri, code in refused.items():
        client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
        try:
            with pytest.raises(OperationFailure) as caught:
                client["devservices_test"]["images"].insert_one({"_id": "img-1"})
            assert caught.value.code == code, caught.value
        finally:
            client.close()
    # Only its owner can read it; no command line shows it.
    assert stack.config.state_dir.stat().st_mode & 0o777 == 0o700
    assert stack.config.password_file.stat().st_mode & 0o777 == 0o600
    for entry in ds.status(stack.config):
        assert password.encode() not in Path(f"/proc/{entry.pid}/cmdline").read_bytes()
    printed = subprocess.run(
        [sys.executable, "-m", "appliance", "services", "up"],
        env=cli_env(stack.config), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert password not in printed.stdout + printed.stderr
    assert "appliance:****@" in printed.stdout


def test_mongodb_speaks_only_tls_with_the_stacks_certificate(stack: Stack, tmp_path: Path) -> None:
    """The right login is refused without TLS, and over TLS by a client that trusts another CA."""
    from pymongo.errors import ServerSelectionTimeoutError

    if not any(s.name == "mongodb" and "FerretDB" in s.detail for s in ds.status(stack.config)):
        pytest.skip("a real mongod serves here, without TLS")
    good = stack.endpoints.mongodb_uri
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(pki.new_authority("another deployment's CA").cert_pem)
    plain = good.split("&tls=")[0]
    untrusted = good.replace(str(stack.config.ca_file), str(other_ca))
    outcomes = {}
    for name, uri in {"no TLS": plain, "untrusted CA": untrusted}.items():
        client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=5_000)
        try:
            with pytest.raises(ServerSelectionTimeoutError) as caught:
                client["devservices_test"]["images"].insert_one({"_id": f"refused-{name}"})
            outcomes[name] = str(caught.value).split(" (configured")[0]
        finally:
            client.close()
    print(outcomes)
    assert "CERTIFICATE_VERIFY_FAILED" in outcomes["untrusted CA"]
    # In the same way the stack's own URI gets in: the refusals are TLS's doing.
    client = MongoClient(good, serverSelectionTimeoutMS=10_000)
    try:
        client["devservices_test"]["images"].insert_one({"_id": "tls-ok"})
    finally:
        client.close()
    for path in (stack.config.mongodb_cert_file, stack.config.mongodb_key_file):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_lookup_by_id_uses_the_id_index(stack: Stack) -> None:
    """The stand-in's _id lookups search its index; unpatched FerretDB 1.24 scanned the table."""
    if not any(s.name == "mongodb" and "FerretDB" in s.detail for s in ds.status(stack.config)):
        pytest.skip("a real mongod serves here: the FerretDB build is not in use")
    client: MongoClient[dict[str, object]] = MongoClient(
        stack.endpoints.mongodb_uri, serverSelectionTimeoutMS=10_000
    )
    try:
        db = client["devservices_test"]
        db["images"].insert_many([{"_id": f"img-{n}", "n": n} for n in range(100)])
        explained = db.command("explain", {"find": "images", "filter": {"_id": "img-42"}})
        (plan,) = explained["queryPlanner"]["Plan"]
        assert "SEARCH" in plan and "USING INDEX" in plan, plan
        assert db["images"].find_one({"_id": "img-42"}) == {"_id": "img-42", "n": 42}
    finally:
        client.drop_database("devservices_test")
        client.close()


def test_a_killed_service_is_started_again_on_its_data(stack: Stack) -> None:
    """kill -9 of the broker and of the database, then `up`: both back, nothing accepted lost."""
    import signal

    topic = f"devservices-{uuid.uuid4().hex[:8]}"
    uri = stack.endpoints.mongodb_uri
    producer = KafkaProducer(**login(stack), acks="all")
    try:
        producer.send(topic, value=b"before the crash").get(timeout=30)
    finally:
        producer.close()
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    client["devservices_test"]["kept"].insert_one({"_id": "img-1"})
    client.close()
    before = {entry.name: entry.pid for entry in ds.status(stack.config)}
    for pid in before.values():
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(entry.running for entry in ds.status(stack.config)):
        assert time.monotonic() < deadline, "still running after SIGKILL"
        time.sleep(0.2)

    out = io.StringIO()
    assert ds.up(stack.config, out=out) == stack.endpoints
    printed = out.getvalue()
    assert "kafka (pid" in printed and "is not running: starting it again on its data" in printed
    assert "services up again" in printed
    after = ds.status(stack.config)
    assert all(entry.healthy for entry in after)
    assert all(entry.pid != before[entry.name] for entry in after)

    consumer = KafkaConsumer(
        topic, **login(stack), auto_offset_reset="earliest", consumer_timeout_ms=30_000
    )
    try:
        assert next(iter(consumer)).value == b"before the crash"
    finally:
        consumer.close()
    client = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    try:
        assert client["devservices_test"]["kept"].find_one({"_id": "img-1"}) == {"_id": "img-1"}
    finally:
        client.drop_database("devservices_test")
        client.close()


def test_down_stops_everything_removes_the_data_and_frees_the_ports(stack: Stack) -> None:
    # Last in this module: the stack fixture's own teardown then finds nothing to stop.
    pids = [(entry.pid, entry.name) for entry in ds.status(stack.config)]
    assert ds.down(stack.config, out=io.StringIO()) is True
    assert not stack.config.state_dir.exists()
    for pid, name in pids:
        assert pid is not None
        assert not ds.process_alive(pid, "kafka.Kafka" if name == "kafka" else "ferretdb"), name
    config = stack.config
    ports = (config.kafka_port, config.kafka_controller_port, config.mongodb_port,
             config.kafka_internal_port)  # fmt: skip
    for port in ports:
        assert ds.port_free(port), port
    assert ds.status(config) == []
    assert not ds.is_running(config)


def test_a_service_that_never_gets_healthy_fails_with_its_log_and_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka, controller, mongodb, internal = free_ports(4)
    config = ds.ServicesConfig(
        kafka_port=kafka,
        kafka_controller_port=controller,
        mongodb_port=mongodb,
        kafka_internal_port=internal,
        state_dir=tmp_path / "state",
    )
    monkeypatch.setattr(lifecycle, "kafka_problem", lambda *_args, **_kwargs: "pretend it is down")
    with pytest.raises(ds.ServiceError) as caught:
        ds.up(config, timeout_s=1, out=io.StringIO())
    message = str(caught.value)
    assert "Kafka" in message and "not healthy in time (pretend it is down)" in message
    assert f"last lines of {config.kafka_dir / 'kafka.log'}" in message
    # The processes are gone (ports free) but the logs stay for reading until `down`.
    assert all(not entry.running for entry in ds.status(config))
    assert ds.port_free(kafka) and ds.port_free(mongodb)
    assert (config.kafka_dir / "kafka.log").exists()
    assert ds.down(config, out=io.StringIO()) is True
    assert not config.state_dir.exists()
