"""`appliance services` for real, as its clients meet them: Kafka and the MongoDB-protocol server
let the stack's login in over TLS and refuse others, keep the secrets private, and upsert and look
up documents as the DB consumer does.

A stack of its own on free ports (``devservices_stack``), like test_devservices.py's.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from pymongo import MongoClient, UpdateOne

from appliance.cloud import pki
from appliance.ops import services as ds

from .devservices_stack import Stack, cli_env, login, serves_ferretdb

pytestmark = pytest.mark.integration


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

    if not serves_ferretdb(stack):
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

    if not serves_ferretdb(stack):
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
    if not serves_ferretdb(stack):
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
