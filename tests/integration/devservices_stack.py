"""A stack of `appliance services` of its own, on free ports, for the tests that use one."""

from __future__ import annotations

import io
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.ops import services as ds


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


def config_on_free_ports(state_dir: Path) -> ds.ServicesConfig:
    """A stack's settings with its four ports free now and its own state directory."""
    kafka, controller, mongodb, internal = free_ports(4)
    return ds.ServicesConfig(
        kafka_port=kafka,
        kafka_controller_port=controller,
        mongodb_port=mongodb,
        kafka_internal_port=internal,
        state_dir=state_dir,
    )


def start_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own on free ports, up for a test module; down after it."""
    config = config_on_free_ports(tmp_path_factory.mktemp("services") / "state")
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


def login(stack: Stack) -> dict[str, object]:
    """The stack's clients' options: SASL_SSL, SCRAM-SHA-512, the stack's CA."""
    return stack.endpoints.settings(Settings()).kafka_options()


def serves_ferretdb(stack: Stack) -> bool:
    """Whether the MongoDB-protocol server is the FerretDB build (a mongod on PATH is preferred)."""
    return any(s.name == "mongodb" and "FerretDB" in s.detail for s in ds.status(stack.config))
