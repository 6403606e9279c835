"""The pure parts of `appliance services`: configuration, rendering, tool checks, guards."""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.config import ConfigError, Settings
from appliance.ops import services as ds


def config(tmp_path: Path, **overrides: object) -> ds.ServicesConfig:
    values: dict[str, object] = {
        "state_dir": tmp_path / "state",
        "cache_dir": tmp_path / "cache",
        **overrides,
    }
    return ds.ServicesConfig(**values)  # type: ignore[arg-type]


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


# --- configuration -------------------------------------------------------------------------------


def test_defaults_are_the_documented_ports_and_directory() -> None:
    cfg = ds.ServicesConfig.from_env({})
    assert (cfg.kafka_port, cfg.kafka_controller_port, cfg.mongodb_port) == (9092, 9093, 27017)
    assert cfg.kafka_internal_port == 9094
    assert cfg.state_dir == Path("/tmp/appliance-services")
    assert cfg.cache_dir == Path.home() / ".cache" / "appliance"
    # Before any `up` (no passwords made yet), no credentials and no Kafka login.
    env = replace(cfg, state_dir=Path("/nonexistent/appliance-services")).endpoints.env()
    assert env == {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "MONGODB_URI": "mongodb://127.0.0.1:27017",
    }


def test_environment_overrides_ports_and_directories() -> None:
    cfg = ds.ServicesConfig.from_env(
        {
            "APPLIANCE_KAFKA_PORT": "19092",
            "APPLIANCE_KAFKA_CONTROLLER_PORT": "19093",
            "APPLIANCE_MONGODB_PORT": "27018",
            "APPLIANCE_KAFKA_INTERNAL_PORT": "19094",
            "APPLIANCE_SERVICES_DIR": "/tmp/elsewhere",
            "XDG_CACHE_HOME": "/var/cache/me",
        }
    )
    assert (cfg.kafka_port, cfg.kafka_controller_port, cfg.mongodb_port) == (19092, 19093, 27018)
    assert cfg.kafka_internal_port == 19094
    assert cfg.state_dir == Path("/tmp/elsewhere")
    assert cfg.cache_dir == Path("/var/cache/me/appliance")
    assert cfg.endpoints.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert cfg.endpoints.mongodb_uri == "mongodb://127.0.0.1:27018"


@pytest.mark.parametrize("raw", ["nine", "0", "70000", "-1"])
def test_a_bad_port_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="APPLIANCE_MONGODB_PORT"):
        ds.ServicesConfig.from_env({"APPLIANCE_MONGODB_PORT": raw})


def test_ports_must_differ(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must differ"):
        config(tmp_path, kafka_port=9092, kafka_controller_port=9092)


def test_env_lines_plain_and_for_eval() -> None:
    endpoints = ds.Endpoints("127.0.0.1:9092", "mongodb://127.0.0.1:27017")
    assert endpoints.env_lines() == [
        "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092",
        "MONGODB_URI=mongodb://127.0.0.1:27017",
    ]
    assert endpoints.env_lines(export=True)[0] == "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092"


def test_the_mongodb_password_joins_the_uri_and_is_masked_when_printed(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.password_file.parent.mkdir(parents=True)
    cfg.password_file.write_text("s3cret-pw\n")
    uri = cfg.endpoints.mongodb_uri
    assert uri == (
        f"mongodb://appliance:s3cret-pw@127.0.0.1:{cfg.mongodb_port}/?authSource=admin"
        f"&tls=true&tlsCAFile={cfg.ca_file}"
    )
    masked = cfg.endpoints.env_lines(reveal=False)[1]
    assert "s3cret" not in masked and "appliance:****@127.0.0.1" in masked
    assert "s3cret-pw" in cfg.endpoints.env_lines(export=True)[1]


def test_the_kafka_password_brings_sasl_ssl_and_is_masked_when_printed(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.kafka_password_file.parent.mkdir(parents=True)
    cfg.kafka_password_file.write_text("k4fka-pw\n")
    env = cfg.endpoints.env()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert (env["KAFKA_USERNAME"], env["KAFKA_PASSWORD"]) == ("appliance", "k4fka-pw")
    assert env["KAFKA_CA_FILE"] == str(cfg.ca_file)
    assert "k4fka" not in "\n".join(cfg.endpoints.env_lines(reveal=False))
    assert "k4fka" not in repr(cfg.endpoints)
    options = cfg.endpoints.settings(Settings()).kafka_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["ssl_check_hostname"] is True


# --- rendering -----------------------------------------------------------------------------------


def test_cluster_id_is_16_random_bytes_url_safe_without_padding() -> None:
    # 2,000 draws: with 1 in 64 starting with "-", one would slip through all but surely.
    ids = {ds.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    for cluster_id in ids:
        # kafka-storage's parser would read a leading "-" as an option ("expected one argument").
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id)
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_server_properties_single_node_kraft_on_loopback(tmp_path: Path) -> None:
    cfg = config(tmp_path, kafka_port=19092, kafka_controller_port=19093)
    props = properties(ds.render_server_properties(cfg))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:19093"
    # Clients get SASL_SSL only; PLAINTEXT is the broker's own, on loopback.
    assert props["listeners"] == (
        "SASL_SSL://127.0.0.1:19092,INTERNAL://127.0.0.1:9094,CONTROLLER://127.0.0.1:19093"
    )
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:19092,INTERNAL://127.0.0.1:9094"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL"
    )
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["ssl.keystore.type"] == "PEM"
    assert props["ssl.keystore.location"] == str(cfg.kafka_keystore)
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "state" / "kafka" / "data")
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
    ):
        assert props[key] == "1", key
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "3"


def test_log4j_writes_to_the_given_file(tmp_path: Path) -> None:
    log_file = tmp_path / "kafka.log"
    props = properties(ds.render_log4j_properties(log_file))
    assert props["log4j.rootLogger"].startswith("INFO, ")
    appender = props["log4j.rootLogger"].split(",")[1].strip()
    assert props[f"log4j.appender.{appender}.File"] == str(log_file)


def test_pom_pins_kafka_and_the_slf4j_binding() -> None:
    pom = ds.render_pom()
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "<version>3.8.0</version>" in pom
    assert "<artifactId>slf4j-reload4j</artifactId>" in pom
    assert "<version>1.7.36</version>" in pom


def test_kafka_commands_use_the_cached_jars_and_a_modest_heap(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    libs = tmp_path / "libs"
    server = ds.kafka_server_command("/usr/bin/java", libs, cfg)
    assert server[0] == "/usr/bin/java"
    assert "-Xmx512m" in server
    assert server[server.index("-cp") + 1] == f"{libs}/*"
    assert server[-2:] == ["kafka.Kafka", str(cfg.kafka_dir / "server.properties")]
    fmt = ds.kafka_format_command("/usr/bin/java", libs, cfg, "AAAAAAAAAAAAAAAAAAAAAA")
    main = fmt.index("kafka.tools.StorageTool")
    assert fmt[main + 1 :] == [
        "format",
        "-t",
        "AAAAAAAAAAAAAAAAAAAAAA",
        "-c",
        str(cfg.kafka_dir / "server.properties"),
    ]


def test_ferretdb_runs_sqlite_on_loopback_tls_only_without_telemetry(tmp_path: Path) -> None:
    cfg = config(tmp_path, mongodb_port=27018)
    command = ds.ferretdb_command(tmp_path / "ferretdb", cfg)
    assert "--handler=sqlite" in command
    assert f"--sqlite-url=file:{cfg.mongodb_dir / 'data'}/" in command
    # No plain listener; TLS on loopback with the stack's certificate.
    assert "--listen-addr=" in command
    assert "--listen-tls=127.0.0.1:27018" in command
    assert f"--listen-tls-cert-file={cfg.mongodb_cert_file}" in command
    assert f"--listen-tls-key-file={cfg.mongodb_key_file}" in command
    assert "--telemetry=disable" in command
    assert "--debug-addr=-" in command


def test_mongod_binds_loopback_with_its_data_in_the_state_dir(tmp_path: Path) -> None:
    cfg = config(tmp_path, mongodb_port=27018)
    command = ds.mongod_command("/usr/bin/mongod", cfg)
    assert command[command.index("--bind_ip") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "27018"
    assert command[command.index("--dbpath") + 1] == str(cfg.mongodb_dir / "data")


def test_status_line_shows_name_pid_address_and_health() -> None:
    healthy = ds.ServiceStatus("kafka", 42, "127.0.0.1:9092", True, True, "Kafka 3.8.0")
    assert re.match(
        r"kafka\s+pid 42\s+127\.0\.0\.1:9092\s+healthy\s+Kafka 3\.8\.0$", healthy.line()
    )
    gone = ds.ServiceStatus("mongodb", 43, "127.0.0.1:27017", False, False, "")
    assert gone.line().endswith("NOT RUNNING")


# --- tools and guards ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "package"),
    [(ds.JAVA, "default-jre-headless"), (ds.MAVEN, "maven"), (ds.GO, "golang")],
)
def test_a_missing_tool_names_the_debian_package(
    tmp_path: Path, tool: ds.Tool, package: str
) -> None:
    with pytest.raises(ds.MissingToolError) as caught:
        ds.find_tool(tool, path=str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    assert f"`{tool.command}` not found" in message
    assert f"apt-get install {package}" in message


def test_toolchain_checks_java_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ds.MissingToolError, match="default-jre-headless"):
        ds.find_toolchain(config(tmp_path), path=str(tmp_path))


def test_toolchain_needs_no_maven_or_go_once_everything_is_cached(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text("#!/bin/sh\n")
    java.chmod(0o755)
    cfg = config(tmp_path)
    ds.kafka_home(cfg.cache_dir).mkdir(parents=True)
    (ds.kafka_home(cfg.cache_dir) / ds.FETCHED_MARKER).write_text("done\n")
    ds.ferretdb_binary(cfg.cache_dir).parent.mkdir(parents=True)
    ds.ferretdb_binary(cfg.cache_dir).write_text("")
    tools = ds.find_toolchain(cfg, path=str(bin_dir))
    assert tools == ds.Toolchain(java=str(java), mvn=None, mongod=None, go=None)


def test_cli_reports_missing_java_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    empty_path = tmp_path / "empty-bin"
    empty_path.mkdir()
    env = {
        "PATH": str(empty_path),
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "APPLIANCE_SERVICES_DIR": str(tmp_path / "state"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "services", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "java" in lines[0]
    assert "apt-get install default-jre-headless" in lines[0]
    assert result.stdout == ""


def test_a_taken_port_is_reported_with_the_variable_to_change(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        cfg = config(tmp_path, mongodb_port=port)
        assert not ds.port_free(port)
        with pytest.raises(ds.ServiceError, match=rf"port {port} .*APPLIANCE_MONGODB_PORT"):
            ds.check_ports_free(cfg)
    assert ds.port_free(port)


def test_up_and_down_refuse_a_foreign_directory(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.state_dir.mkdir()
    (cfg.state_dir / "precious.txt").write_text("not ours\n")
    with pytest.raises(ds.ServiceError, match="not using or removing"):
        ds.up(cfg, out=io.StringIO())
    with pytest.raises(ds.ServiceError, match="not using or removing"):
        ds.down(cfg, out=io.StringIO())
    assert (cfg.state_dir / "precious.txt").exists()


def test_down_when_nothing_runs_says_so(tmp_path: Path) -> None:
    out = io.StringIO()
    assert ds.down(config(tmp_path), out=out) is False
    assert "not running" in out.getvalue()
    assert ds.status(config(tmp_path)) == []
    assert ds.is_running(config(tmp_path)) is False


def test_stop_process_terminates_a_detached_child(tmp_path: Path) -> None:
    pid = ds.spawn_detached(["sleep", "60"], tmp_path / "sleep.log", tmp_path)
    assert ds.process_alive(pid, "sleep")
    ds.stop_process(pid, "sleep", timeout_s=5)
    assert not ds.process_alive(pid, "sleep")


def test_a_reused_pid_is_not_taken_for_the_service() -> None:
    # This test's own process is alive but is not Kafka: status must not call it running.
    assert not ds.process_alive(os.getpid(), "kafka.Kafka")


def test_log_tail_shows_the_last_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "x.log"
    log_file.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = ds.log_tail(log_file, lines=3).splitlines()
    assert [line.strip() for line in tail] == ["line 97", "line 98", "line 99"]
    assert "missing" in ds.log_tail(tmp_path / "absent.log")
