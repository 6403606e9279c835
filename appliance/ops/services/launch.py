"""What `up` needs and does to start each service: the programs, the state directory (passwords,
TLS, Kafka's configuration), and starting Kafka and the MongoDB-protocol server detached."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from appliance.cloud.credentials import write_private
from appliance.ops.services.config import (
    FERRETDB_VERSION,
    HOST,
    KAFKA_VERSION,
    STATE_FORMAT,
    ServicesConfig,
)
from appliance.ops.services.health import Started
from appliance.ops.services.kafka import (
    kafka_libs_cached,
    kafka_server_command,
    render_log4j_properties,
    render_server_properties,
)
from appliance.ops.services.mongodb import (
    ensure_ferretdb,
    ferretdb_binary,
    ferretdb_command,
    ferretdb_env,
    mongod_command,
)
from appliance.ops.services.processes import spawn_detached
from appliance.ops.services.state import write_state
from appliance.ops.services.tools import GO, JAVA, MAVEN, find_tool

# --- the programs `up` needs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    java: str
    mvn: str | None  # None: the Kafka jars are cached
    mongod: str | None  # preferred over FerretDB when present
    go: str | None  # None: mongod is used or FerretDB is cached


def find_toolchain(config: ServicesConfig, path: str | None = None) -> Toolchain:
    """Every program `up` will need, checked before anything starts: one clear message, early."""
    java = find_tool(JAVA, path)
    mvn = None if kafka_libs_cached(config.cache_dir) else find_tool(MAVEN, path)
    mongod = shutil.which("mongod", path=path)
    needs_go = mongod is None and not ferretdb_binary(config.cache_dir).exists()
    go = find_tool(GO, path) if needs_go else None
    return Toolchain(java=java, mvn=mvn, mongod=mongod, go=go)


# --- the state directory and the services' processes -------------------------------------------


@dataclass(frozen=True)
class MongoCommand:
    command: list[str]
    detail: str
    authenticated: bool  # the server checks the stack's password (FerretDB: yes; mongod: no)


def mongodb_command(config: ServicesConfig, tools: Toolchain, out: TextIO) -> MongoCommand:
    if tools.mongod is not None:
        # A mongod found on PATH runs without authentication, as before.
        return MongoCommand(mongod_command(tools.mongod, config), f"mongod ({tools.mongod})", False)
    binary = ensure_ferretdb(config.cache_dir, tools.go, out)
    detail = f"FerretDB {FERRETDB_VERSION} (SQLite, SCRAM authentication)"
    return MongoCommand(ferretdb_command(binary, config), detail, True)


def ensure_password(path: Path) -> None:
    """One of the stack's passwords: made once, readable by its owner only."""
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")


def make_tls(config: ServicesConfig) -> None:
    """The stack's own CA, and the broker's and FerretDB's certificates for 127.0.0.1 and
    localhost."""
    from appliance.cloud import pki

    config.tls_dir.mkdir(mode=0o700, exist_ok=True)
    # A common name holds 64 characters at most: no state-dir path in it, the key tells CAs apart.
    authority = pki.new_authority("appliance services CA")
    pki.write_authority(config.tls_dir, authority)
    server = pki.issue(authority, "kafka", [HOST, "localhost"])
    pki.write_keystore(config.kafka_keystore, server, authority)
    # FerretDB reads its certificate and key from two files.
    mongodb = pki.issue(authority, "mongodb", [HOST, "localhost"])
    write_private(config.mongodb_cert_file, (mongodb.cert_pem + authority.cert_pem).decode())
    write_private(config.mongodb_key_file, mongodb.key_pem.decode())


def prepare_state_dir(config: ServicesConfig) -> None:
    for directory in (config.kafka_dir / "data", config.mongodb_dir / "data"):
        directory.mkdir(parents=True, exist_ok=True)
    # The data, the passwords, the keys and the state file with the URIs: the owner's only.
    config.state_dir.chmod(0o700)
    # Written first: from here on `down` recognises the directory as ours and may remove it.
    write_state(config, {"format": STATE_FORMAT, "services": {}})
    ensure_password(config.kafka_password_file)
    make_tls(config)
    kafka_log = config.kafka_dir / "kafka.log"
    (config.kafka_dir / "server.properties").write_text(render_server_properties(config))
    (config.kafka_dir / "log4j.properties").write_text(render_log4j_properties(kafka_log))


def record(config: ServicesConfig, state: dict[str, Any], name: str, entry: dict[str, Any]) -> None:
    state["services"][name] = entry
    state["endpoints"] = config.endpoints.env()
    write_state(config, state)


def start_kafka(
    config: ServicesConfig, java: str, libs: Path, state: dict[str, Any], out: TextIO
) -> Started:
    address = config.endpoints.kafka_bootstrap_servers
    print(f"starting Kafka {KAFKA_VERSION} (KRaft) on {address} ...", file=out, flush=True)
    command = kafka_server_command(java, libs, config)
    pid = spawn_detached(command, config.kafka_dir / "stdout.log", config.kafka_dir)
    match = "kafka.Kafka"
    detail = f"Kafka {KAFKA_VERSION} (KRaft, controller on {HOST}:{config.kafka_controller_port})"
    entry = {"pid": pid, "match": match, "address": address, "detail": detail}
    record(config, state, "kafka", entry)
    # The broker logs through log4j; the JVM's own output only has failures before log4j is up.
    logs = (config.kafka_dir / "kafka.log", config.kafka_dir / "stdout.log")
    return Started("Kafka", pid, match, logs)


def start_mongodb(
    config: ServicesConfig, mongo: MongoCommand, state: dict[str, Any], out: TextIO
) -> Started:
    address = f"{HOST}:{config.mongodb_port}"
    print(f"starting {mongo.detail} on {address} ...", file=out, flush=True)
    log_path = config.mongodb_dir / "server.log"
    env = None
    if mongo.authenticated:
        ensure_password(config.password_file)
        env = ferretdb_env(config)
    pid = spawn_detached(mongo.command, log_path, config.mongodb_dir, env)
    match = mongo.command[0]
    entry = {"pid": pid, "match": match, "address": address, "detail": mongo.detail}
    record(config, state, "mongodb", entry)
    return Started("MongoDB-protocol server", pid, match, (log_path,))
