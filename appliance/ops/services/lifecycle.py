"""Starting and stopping the services: `up` (which starts a service that died again on its data),
`down`, `status` and `is_running`, over the state file (``state``) and the steps that start each
service (``launch``)."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from appliance.config import Settings
from appliance.ops.services.config import (
    DEFAULT_STOP_TIMEOUT_S,
    DEFAULT_UP_TIMEOUT_S,
    KAFKA_USER,
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
)
from appliance.ops.services.launch import (
    find_toolchain,
    mongodb_command,
    prepare_state_dir,
    start_kafka,
    start_mongodb,
)
from appliance.ops.services.processes import (
    check_ports_free,
    process_alive,
    stop_process,
)
from appliance.ops.services.state import read_state, refuse_foreign_dir


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
    refuse_foreign_dir(config)
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
    refuse_foreign_dir(config)
    if _already_up(config, timeout_s, out):
        return config.endpoints
    tools = find_toolchain(config)
    check_ports_free(config)
    libs = ensure_kafka_libs(config.cache_dir, tools.mvn, out)
    mongo = mongodb_command(config, tools, out)
    start = time.monotonic()
    prepare_state_dir(config)
    _format_kafka_storage(config, tools.java, libs)
    state: dict[str, Any] = {"format": STATE_FORMAT, "services": {}}
    try:
        kafka = start_kafka(config, tools.java, libs, state, out)
        mongodb = start_mongodb(config, mongo, state, out)
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
                started = start_kafka(config, tools.java, libs, state, out)
            else:
                mongo = mongodb_command(config, tools, out)
                started = start_mongodb(config, mongo, state, out)
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
