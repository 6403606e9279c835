"""Starting and stopping the services: the state file that records them, `up` (which starts a
service that died again on its data), `down`, `status` and `is_running`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from appliance.cloud.credentials import write_private
from appliance.config import Settings
from appliance.ops.services.config import (
    DEFAULT_STOP_TIMEOUT_S,
    DEFAULT_UP_TIMEOUT_S,
    ENV_STATE_DIR,
    FERRETDB_VERSION,
    HOST,
    KAFKA_USER,
    KAFKA_VERSION,
    STATE_FILE,
    STATE_FORMAT,
    Endpoints,
    ServiceError,
    ServicesConfig,
    ServiceStatus,
)
from appliance.ops.services.health import (
    Started,
    _quiet_client_logs,
    kafka_problem,
    mongodb_problem,
    wait_healthy,
)
from appliance.ops.services.kafka import (
    _format_kafka_storage,
    add_scram_user,
    ensure_kafka_libs,
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
from appliance.ops.services.processes import (
    check_ports_free,
    process_alive,
    spawn_detached,
    stop_process,
)
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


# --- state ---------------------------------------------------------------------------------------


def read_state(config: ServicesConfig) -> dict[str, Any] | None:
    try:
        state = json.loads(config.state_file.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ServiceError(f"{config.state_file} is not valid JSON ({exc}); remove it") from None
    if state.get("format") != STATE_FORMAT:
        raise ServiceError(f"{config.state_file} was written by another version; remove it")
    return state


def write_state(config: ServicesConfig, state: dict[str, Any]) -> None:
    partial = config.state_file.with_suffix(".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    partial.replace(config.state_file)


def _refuse_foreign_dir(config: ServicesConfig) -> None:
    """Never start in, or delete, a directory this tool did not create."""
    directory = config.state_dir
    if directory.exists() and not config.state_file.exists() and any(directory.iterdir()):
        raise ServiceError(
            f"{directory} exists, is not empty and holds no {STATE_FILE}: not using or removing "
            f"it; choose another directory with {ENV_STATE_DIR}=<dir>"
        )


def kafka_login(config: ServicesConfig) -> dict[str, object]:
    """The stack's Kafka clients' security options (SASL_SSL once `up` made the password)."""
    return config.endpoints.settings(Settings()).kafka_options()


def _service_status(config: ServicesConfig, name: str, entry: Mapping[str, Any]) -> ServiceStatus:
    pid, match, address = int(entry["pid"]), str(entry["match"]), str(entry["address"])
    if not process_alive(pid, match):
        return ServiceStatus(name, pid, address, running=False, healthy=False, detail="")
    with _quiet_client_logs():
        if name == "kafka":
            reason = kafka_problem(address, timeout_s=3.0, login=kafka_login(config))
        else:
            reason = mongodb_problem(config.endpoints.mongodb_uri, timeout_s=2.0)
    detail = str(entry.get("detail", "")) if reason is None else reason
    return ServiceStatus(name, pid, address, running=True, healthy=reason is None, detail=detail)


def _stop_recorded(state: Mapping[str, Any], timeout_s: float, out: TextIO) -> None:
    for name, entry in state.get("services", {}).items():
        pid, match = int(entry["pid"]), str(entry["match"])
        if process_alive(pid, match):
            print(f"stopping {name} (pid {pid}) ...", file=out, flush=True)
            stop_process(pid, match, timeout_s)


# --- the API the CLI and the tests use ----------------------------------------------------------


def status(config: ServicesConfig | None = None) -> list[ServiceStatus]:
    """One entry per recorded service; empty when the services were never started here."""
    config = config or ServicesConfig.from_env()
    state = read_state(config)
    if state is None:
        return []
    services = state.get("services", {})
    return [_service_status(config, name, entry) for name, entry in services.items()]


def is_running(config: ServicesConfig | None = None) -> bool:
    """Whether a stack started here answers, healthy: callers that find one leave it running."""
    statuses = status(config)
    return bool(statuses) and all(entry.healthy for entry in statuses)


def down(
    config: ServicesConfig | None = None,
    *,
    timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    out: TextIO | None = None,
) -> bool:
    """Stop the services and delete their data. False when there was nothing to stop."""
    config = config or ServicesConfig.from_env()
    out = out or sys.stderr
    _refuse_foreign_dir(config)
    state = read_state(config)
    if state is None:
        with contextlib.suppress(OSError):
            config.state_dir.rmdir()  # only when empty
        print(f"services are not running (nothing in {config.state_dir})", file=out, flush=True)
        return False
    _stop_recorded(state, timeout_s, out)
    shutil.rmtree(config.state_dir)
    print(f"services stopped; removed {config.state_dir}", file=out, flush=True)
    return True


def up(
    config: ServicesConfig | None = None,
    *,
    timeout_s: float = DEFAULT_UP_TIMEOUT_S,
    out: TextIO | None = None,
) -> Endpoints:
    """Start Kafka and the MongoDB-protocol server, healthy, or say they already are."""
    config = config or ServicesConfig.from_env()
    out = out or sys.stderr
    _refuse_foreign_dir(config)
    if _already_up(config, timeout_s, out):
        return config.endpoints
    tools = find_toolchain(config)
    check_ports_free(config)
    libs = ensure_kafka_libs(config.cache_dir, tools.mvn, out)
    mongo = _mongodb_command(config, tools, out)
    start = time.monotonic()
    _prepare_state_dir(config)
    _format_kafka_storage(config, tools.java, libs)
    state: dict[str, Any] = {"format": STATE_FORMAT, "services": {}}
    try:
        kafka = _start_kafka(config, tools.java, libs, state, out)
        mongodb = _start_mongodb(config, mongo, state, out)
        deadline = time.monotonic() + timeout_s
        endpoints = config.endpoints
        wait_healthy(mongodb, lambda: mongodb_problem(endpoints.mongodb_uri), deadline)
        # The loopback listener first, then the clients' login, then the clients' listener.
        wait_healthy(kafka, lambda: kafka_problem(config.kafka_internal_address), deadline)
        add_scram_user(tools.java, libs, config, KAFKA_USER, endpoints.kafka_password)
        bootstrap, login = endpoints.kafka_bootstrap_servers, kafka_login(config)
        wait_healthy(
            kafka, lambda: kafka_problem(bootstrap, create_topic=True, login=login), deadline
        )
    except BaseException:
        # Free the ports but keep the logs for reading; the next `up` or `down` clears them.
        _stop_recorded(state, DEFAULT_STOP_TIMEOUT_S, out)
        raise
    print(
        f"services up in {time.monotonic() - start:.1f}s (data in {config.state_dir}; "
        "stop with `appliance services down`)",
        file=out,
        flush=True,
    )
    return config.endpoints


def _already_up(config: ServicesConfig, timeout_s: float, out: TextIO) -> bool:
    """True when a healthy stack answers here, once any service that died is started again on
    its data; a start that never finished is cleared for a new one."""
    state = read_state(config)
    if state is None:
        return False
    statuses = [_service_status(config, name, e) for name, e in state["services"].items()]
    if statuses and all(s.healthy for s in statuses):
        if state.get("endpoints") != config.endpoints.env():
            raise ServiceError(
                f"services are already running from {config.state_dir} with "
                f"{state.get('endpoints')}, not the ports asked for; "
                "run `appliance services down` first"
            )
        print(f"services already running and healthy (data in {config.state_dir})", file=out)
        return True
    if _resumable(config, state):
        # A crashed broker or database keeps what it had accepted: start it again, never wipe.
        _restart_stopped(config, state, statuses, timeout_s, out)
        return True
    unhealthy = ", ".join(s.name for s in statuses if not s.healthy) or "none recorded"
    print(f"clearing a stale start in {config.state_dir} (not healthy: {unhealthy})", file=out)
    _stop_recorded(state, DEFAULT_STOP_TIMEOUT_S, out)
    shutil.rmtree(config.state_dir)
    return False


def _resumable(config: ServicesConfig, state: Mapping[str, Any]) -> bool:
    """Whether this stack once came up whole (both services, Kafka's storage formatted) with the
    ports asked for now: then a stopped service is started again on its data."""
    return (
        set(state.get("services", {})) == {"kafka", "mongodb"}
        and state.get("endpoints") == config.endpoints.env()
        and (config.kafka_dir / "data" / "meta.properties").exists()
    )


def _restart_stopped(
    config: ServicesConfig,
    state: dict[str, Any],
    statuses: list[ServiceStatus],
    timeout_s: float,
    out: TextIO,
) -> None:
    tools = find_toolchain(config)
    waiting: list[tuple[Started, Callable[[], str | None]]] = []
    endpoints = config.endpoints
    for entry in statuses:
        recorded = state["services"][entry.name]
        if entry.running:  # alive, not yet healthy: wait for it
            started = Started(entry.name, entry.pid, str(recorded["match"]), ())
        else:
            print(
                f"{entry.name} (pid {entry.pid}) is not running: starting it again on its data "
                f"in {config.state_dir}",
                file=out,
                flush=True,
            )
            if entry.name == "kafka":
                libs = ensure_kafka_libs(config.cache_dir, tools.mvn, out)
                started = _start_kafka(config, tools.java, libs, state, out)
            else:
                mongo = _mongodb_command(config, tools, out)
                started = _start_mongodb(config, mongo, state, out)
        if entry.name == "kafka":
            # The SCRAM user is in the broker's metadata log: the clients' login works again.
            login, bootstrap = kafka_login(config), endpoints.kafka_bootstrap_servers
            waiting.append((started, lambda b=bootstrap, lg=login: kafka_problem(b, login=lg)))
        else:
            waiting.append((started, lambda: mongodb_problem(endpoints.mongodb_uri)))
    deadline = time.monotonic() + timeout_s
    try:
        for started, problem in waiting:
            wait_healthy(started, problem, deadline)
    except ServiceError as exc:
        raise ServiceError(
            f"{exc}\nthe data is kept in {config.state_dir}; `appliance services down` deletes "
            "it, and a new `up` starts empty"
        ) from None
    print(f"services up again (data in {config.state_dir})", file=out, flush=True)


@dataclass(frozen=True)
class MongoCommand:
    command: list[str]
    detail: str
    authenticated: bool  # the server checks the stack's password (FerretDB: yes; mongod: no)


def _mongodb_command(config: ServicesConfig, tools: Toolchain, out: TextIO) -> MongoCommand:
    if tools.mongod is not None:
        # A mongod found on PATH runs without authentication, as before.
        return MongoCommand(mongod_command(tools.mongod, config), f"mongod ({tools.mongod})", False)
    binary = ensure_ferretdb(config.cache_dir, tools.go, out)
    detail = f"FerretDB {FERRETDB_VERSION} (SQLite, SCRAM authentication)"
    return MongoCommand(ferretdb_command(binary, config), detail, True)


def _ensure_password(path: Path) -> None:
    """One of the stack's passwords: made once, readable by its owner only."""
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")


def _make_tls(config: ServicesConfig) -> None:
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


def _prepare_state_dir(config: ServicesConfig) -> None:
    for directory in (config.kafka_dir / "data", config.mongodb_dir / "data"):
        directory.mkdir(parents=True, exist_ok=True)
    # The data, the passwords, the keys and the state file with the URIs: the owner's only.
    config.state_dir.chmod(0o700)
    # Written first: from here on `down` recognises the directory as ours and may remove it.
    write_state(config, {"format": STATE_FORMAT, "services": {}})
    _ensure_password(config.kafka_password_file)
    _make_tls(config)
    kafka_log = config.kafka_dir / "kafka.log"
    (config.kafka_dir / "server.properties").write_text(render_server_properties(config))
    (config.kafka_dir / "log4j.properties").write_text(render_log4j_properties(kafka_log))


def _record(
    config: ServicesConfig, state: dict[str, Any], name: str, entry: dict[str, Any]
) -> None:
    state["services"][name] = entry
    state["endpoints"] = config.endpoints.env()
    write_state(config, state)


def _start_kafka(
    config: ServicesConfig, java: str, libs: Path, state: dict[str, Any], out: TextIO
) -> Started:
    address = config.endpoints.kafka_bootstrap_servers
    print(f"starting Kafka {KAFKA_VERSION} (KRaft) on {address} ...", file=out, flush=True)
    command = kafka_server_command(java, libs, config)
    pid = spawn_detached(command, config.kafka_dir / "stdout.log", config.kafka_dir)
    match = "kafka.Kafka"
    detail = f"Kafka {KAFKA_VERSION} (KRaft, controller on {HOST}:{config.kafka_controller_port})"
    entry = {"pid": pid, "match": match, "address": address, "detail": detail}
    _record(config, state, "kafka", entry)
    # The broker logs through log4j; the JVM's own output only has failures before log4j is up.
    logs = (config.kafka_dir / "kafka.log", config.kafka_dir / "stdout.log")
    return Started("Kafka", pid, match, logs)


def _start_mongodb(
    config: ServicesConfig, mongo: MongoCommand, state: dict[str, Any], out: TextIO
) -> Started:
    address = f"{HOST}:{config.mongodb_port}"
    print(f"starting {mongo.detail} on {address} ...", file=out, flush=True)
    log_path = config.mongodb_dir / "server.log"
    env = None
    if mongo.authenticated:
        _ensure_password(config.password_file)
        env = ferretdb_env(config)
    pid = spawn_detached(mongo.command, log_path, config.mongodb_dir, env)
    match = mongo.command[0]
    entry = {"pid": pid, "match": match, "address": address, "detail": mongo.detail}
    _record(config, state, "mongodb", entry)
    return Started("MongoDB-protocol server", pid, match, (log_path,))
