"""Fixtures for the multi-host checks of a local deployment (`appliance cloud up` first).

pytest tests/cluster --provider vm           # the four baked images as QEMU VMs (make cloud-check)
pytest tests/cluster --provider containers   # the playbooks in systemd containers (CI)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance import datasets
from appliance.cloud import topology
from appliance.cloud.local import Provider, provider
from tests.cluster.driver import Machine

ROOT = Path(__file__).resolve().parents[2]
# The producer image's own images (images/containers.mk), else the shared archive they came from.
CAMERA_IMAGES = [
    ROOT / "build/containers/cameras/cifar10-test.tar.gz",
    ROOT.parent / "shared/data/cifar10-jpg.tar.gz",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("appliance cluster")
    group.addoption("--provider", default="vm", choices=("vm", "containers"))
    group.addoption("--cloud-root", type=Path, help="the deployment's state folder")
    group.addoption(
        "--count", type=int, default=200, help="images the cameras send through (N, at least)"
    )


@pytest.fixture(scope="session")
def cloud(request: pytest.FixtureRequest) -> Provider:
    return provider(
        request.config.getoption("--provider"), request.config.getoption("--cloud-root")
    )


@pytest.fixture(scope="session")
def state(cloud: Provider):
    state = cloud.require()
    down = [role for role in topology.DEPLOY_ORDER if not cloud.running(state, role)]
    assert not down, f"not running: {', '.join(down)} (make cloud-up)"
    return state


@pytest.fixture(scope="session")
def machines(cloud: Provider, state) -> dict[str, Machine]:
    plan = cloud.plan(state)
    return {b.role: Machine(cloud, state, b.role, b.address) for b in plan.boots}


@pytest.fixture(scope="session")
def is_vm(request: pytest.FixtureRequest) -> bool:
    return request.config.getoption("--provider") == "vm"


@pytest.fixture(scope="session")
def count(request: pytest.FixtureRequest) -> int:
    return request.config.getoption("--count")


@pytest.fixture(scope="session")
def collection(cloud: Provider, state):
    from pymongo import MongoClient

    client = MongoClient(cloud.mongodb_uri(state), serverSelectionTimeoutMS=10000)
    yield client["iot"]["images"]
    client.close()


@pytest.fixture(scope="session")
def truth() -> dict[bytes, set[str]]:
    """sha256 of each camera image -> its class(es), to check ground_truth against the bytes."""
    source = next((p for p in CAMERA_IMAGES if p.is_file()), None)
    if source is None:
        pytest.skip("no camera images here to check ground truth against")
    table: dict[bytes, set[str]] = {}
    for sample in datasets.load(str(source), "test"):
        table.setdefault(hashlib.sha256(sample.image).digest(), set()).add(sample.label)
    return table
