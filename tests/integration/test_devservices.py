"""`appliance services` for real: up, status, up again, a crash and a start that fails, down.

Runs on free ports and in its own state directory, so a stack started with `make services` on the
default ports keeps running. The jars and the FerretDB binary come from the user's cache (the first
run fetches and builds them: minutes). What the clients meet is in test_devservices_clients.py.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from pymongo import MongoClient

from appliance.ops import services as ds
from appliance.ops.services import lifecycle

from .devservices_stack import Stack, cli_env, config_on_free_ports, login

pytestmark = pytest.mark.integration


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
    config = config_on_free_ports(tmp_path / "state")
    monkeypatch.setattr(lifecycle, "kafka_problem", lambda *_args, **_kwargs: "pretend it is down")
    with pytest.raises(ds.ServiceError) as caught:
        ds.up(config, timeout_s=1, out=io.StringIO())
    message = str(caught.value)
    assert "Kafka" in message and "not healthy in time (pretend it is down)" in message
    assert f"last lines of {config.kafka_dir / 'kafka.log'}" in message
    # The processes are gone (ports free) but the logs stay for reading until `down`.
    assert all(not entry.running for entry in ds.status(config))
    assert ds.port_free(config.kafka_port) and ds.port_free(config.mongodb_port)
    assert (config.kafka_dir / "kafka.log").exists()
    assert ds.down(config, out=io.StringIO()) is True
    assert not config.state_dir.exists()
