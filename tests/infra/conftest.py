"""testinfra checks of the appliance images, against whatever --hosts names.

    pytest tests/infra/test_image.py --hosts ssh://cc@203.0.113.7 --sudo --image kafka  # booted VM
    pytest tests/infra/test_image.py --hosts docker://appliance-test-kafka --image kafka --baked

--baked: the host is a fresh bake that never booted (no settings, nothing started, no keys left).
Without it the host is a booted VM: its settings exist, its units run and its ports listen.
"""

from __future__ import annotations

import pytest

from appliance import __version__
from appliance.cloud import topology

# Container image (without the prefix) each unit runs.
UNIT_IMAGES = {
    "appliance-producer.service": "producer",
    "appliance-ml-server.service": "ml-server",
    "appliance-kafka.service": "kafka",
    "appliance-consumer-db.service": "consumers",
    "appliance-consumer-inference.service": "consumers",
    "appliance-mongodb.service": "mongodb",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("appliance images")
    group.addoption("--image", choices=list(topology.ROLES), help="which image the hosts are")
    group.addoption("--baked", action="store_true", help="hosts are fresh bakes, never booted")
    group.addoption("--appliance-version", default=__version__, help="container image tag expected")
    group.addoption("--image-prefix", default="appliance", help="container image repository prefix")
    group.addoption(
        "--listen-timeout",
        type=float,
        default=120.0,
        help="seconds a booted host's port may take to listen (a JVM under emulation: minutes)",
    )
    group.addoption(
        "--stable-window",
        type=float,
        default=30.0,
        help="seconds a booted host's units must stay running without a restart",
    )
    group.addoption(
        "--boot-contract",
        action="store_true",
        help="run the boot-contract test (rewrites the settings file: test hosts only)",
    )


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest) -> str:
    name = request.config.getoption("--image")
    if not name:
        pytest.skip("--image not given")
    return name


@pytest.fixture(scope="session")
def baked(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--baked"))


@pytest.fixture(scope="session")
def expected_tag(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--appliance-version")


@pytest.fixture(scope="session")
def listen_timeout(request: pytest.FixtureRequest) -> float:
    return request.config.getoption("--listen-timeout")


@pytest.fixture(scope="session")
def image_prefix(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--image-prefix")


@pytest.fixture(scope="session")
def units(image: str) -> tuple[str, ...]:
    return topology.ROLES[image].units


@pytest.fixture(scope="session")
def stable_window(request: pytest.FixtureRequest) -> float:
    return request.config.getoption("--stable-window")
