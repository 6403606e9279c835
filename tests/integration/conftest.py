"""Real services for integration tests: Kafka, a MongoDB-protocol server, the inference server.

Kafka and MongoDB come from KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI when both are set; otherwise
`appliance services up` starts them (and they are stopped again at the end). Each test gets its
own topics, consumer groups and collection, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pymongo import MongoClient

from appliance import datasets, model
from appliance.config import Settings
from appliance.server.process import ServerProcess

from .devservices_stack import Stack, start_stack
from .harness import ConsumerProcess


@pytest.fixture(scope="session")
def services() -> Iterator[Settings]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    mongodb = os.environ.get("MONGODB_URI")
    if bootstrap and mongodb:
        yield Settings.from_env()  # with KAFKA_SECURITY_PROTOCOL and its login, if set
        return
    from appliance.ops import services as devservices

    was_running = devservices.is_running()
    endpoints = devservices.up()
    yield endpoints.settings(Settings())  # SASL_SSL with the stack's login and CA
    if not was_running:
        devservices.down()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A services stack of the module's own on free ports (test_devservices*: up, used, down)."""
    yield from start_stack(tmp_path_factory)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """The trained model the repository ships: tests see a real model's labels and speed.

    Where it is absent (not a source checkout), a freshly initialised ResNet50 saved through the
    same artifact code.
    """
    if model.shipped_path().exists():
        return model.shipped_path()
    path = tmp_path_factory.mktemp("model") / "resnet50.keras"
    model.create_untrained(path)
    return path


@pytest.fixture(scope="session")
def inference_server(model_path, tmp_path_factory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(model_path, log) as server:
        yield server


@pytest.fixture
def server_factory(model_path, tmp_path) -> Iterator:
    """Servers of a test's own, for tests that stop them or change their settings."""
    made: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None) -> ServerProcess:
        made.append(ServerProcess(model_path, tmp_path / f"server-{len(made)}.log", env=env))
        return made[-1]

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def settings(services: Settings) -> Settings:
    """The test's own topics, groups and collection on the shared services."""
    tag = uuid.uuid4().hex[:8]
    return replace(services.own_names(tag), device_id=f"camera-{tag}")


@pytest.fixture
def consumers(tmp_path) -> Iterator:
    started: list[ConsumerProcess] = []

    def start(command: str, settings: Settings) -> ConsumerProcess:
        proc = ConsumerProcess(command, settings, tmp_path / f"{command}-{len(started)}.log")
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.kill(signal.SIGTERM)


@pytest.fixture
def served_settings(settings: Settings, inference_server: ServerProcess) -> Settings:
    """:func:`settings` pointing at the shared inference server."""
    return replace(settings, inference_url=inference_server.url)


@pytest.fixture
def collection(settings: Settings):
    client: MongoClient = MongoClient(settings.mongodb_uri)
    coll = client[settings.mongodb_database][settings.mongodb_collection]
    yield coll
    coll.drop()
    client.close()


@pytest.fixture(scope="session")
def cifar_test_samples(shared_archive) -> list[datasets.Sample]:
    return datasets.load(str(shared_archive), "test")
