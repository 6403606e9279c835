"""What the stack is made of: its defaults, the services in start order, the `Stack` that names
its containers, network, volumes and images, and a container's `ContainerStatus`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__
from appliance.cloud import credentials, topology
from appliance.ops.stack import tls

DEFAULT_PROJECT = "appliance"
DEFAULT_IMAGE_PREFIX = "appliance"
DEFAULT_ENV_FILE = Path("build/stack/appliance.env")
DEFAULT_TEMPLATE = Path("images/appliance.env.example")
DEFAULT_UP_TIMEOUT_S = 420.0
LABEL_STACK = "appliance.stack"
LABEL_ROLE = "appliance.role"
PROGRESS_INTERVAL_S = 15.0
LOG_TAIL_LINES = 30
# A container Docker restarted this often while `up` waited is failing, not starting.
MAX_RESTARTS_DURING_UP = 3
# Inside the containers the source of the cameras' images is mounted here when it is a local file.
DATA_MOUNT = "/data"

# The peers as the stack's containers see each other (network aliases = roles).
LOCAL_PEERS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
    "MONGODB_URI": "mongodb://mongodb:27017",
    "INFERENCE_URL": "http://ml-server:8000",
}
REQUIRED_SETTINGS = ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI", "INFERENCE_URL")
# Beside the env file: the stack's MongoDB user and password, made by its first `env`.
CREDENTIALS_NAME = "credentials.env"


def local_settings(
    creds: credentials.Credentials | None, secure: tls.StackTLS | None = None
) -> dict[str, str]:
    """LOCAL_PEERS, and with ``creds`` MongoDB's first user (the official image's variables,
    which the ferretdb flavor reads too) and the clients' login in MONGODB_URI; with ``secure``
    the broker's SASL_SSL listener, MongoDB's TLS, and the clients' login and CA. One env file
    serves every container of the stack."""
    settings = dict(LOCAL_PEERS)
    if secure is not None:
        settings.update(tls.settings(secure))
    user, password = (creds.mongodb_user, creds.mongodb_password) if creds else (None, None)
    if creds is not None:
        settings["MONGO_INITDB_ROOT_USERNAME"] = creds.mongodb_user
        settings["MONGO_INITDB_ROOT_PASSWORD"] = creds.mongodb_password
    ca = f"{tls.CONTAINER_DIR}/{tls.CA_NAME}" if secure else None
    if creds is not None or secure is not None:
        settings["MONGODB_URI"] = topology.mongodb_uri("mongodb", user, password, tls_ca_file=ca)
    return settings


ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$")


class StackError(RuntimeError):
    """Docker refused, an image is missing or a container failed; the message says which."""


@dataclass(frozen=True)
class Service:
    role: str  # container name suffix and network alias
    image: str  # image name without prefix and tag
    command: tuple[str, ...] = ()
    volumes: tuple[tuple[str, str], ...] = ()  # (volume name suffix, mount point)
    restart: str = "unless-stopped"
    long_running: bool = True


# In start order: what the others need first.
SERVICES: tuple[Service, ...] = (
    Service("mongodb", "mongodb", volumes=(("mongodb-data", "/data/db"),)),
    Service("kafka", "kafka", volumes=(("kafka-data", "/var/lib/kafka"),)),
    Service("ml-server", "ml-server"),
    # The kafka VM runs both consumers from its own image (tagged appliance/consumers too), as
    # containers of their own.
    Service("consume-db", "consumers", ("appliance", "consume-db")),
    Service("consume-inference", "consumers", ("appliance", "consume-inference")),
)
# The cameras: a job that ends when it has sent what it was told; restarted only if it fails.
PRODUCER = Service(
    "producer",
    "producer",
    volumes=(("producer-cache", "/var/cache/appliance"),),
    restart="on-failure:5",
    long_running=False,
)
INFRASTRUCTURE = ("mongodb", "kafka")
CONSUMERS = ("consume-db", "consume-inference")


@dataclass(frozen=True)
class Stack:
    project: str = DEFAULT_PROJECT
    tag: str = __version__
    env_file: Path = DEFAULT_ENV_FILE
    image_prefix: str = DEFAULT_IMAGE_PREFIX
    docker: str = "docker"

    @property
    def network(self) -> str:
        return self.project

    def container(self, role: str) -> str:
        return f"{self.project}-{role}"

    def volume(self, suffix: str) -> str:
        return f"{self.project}-{suffix}"

    def image(self, name: str) -> str:
        return f"{self.image_prefix}/{name}:{self.tag}"

    def images(self) -> list[str]:
        names = dict.fromkeys(s.image for s in (*SERVICES, PRODUCER))
        return [self.image(name) for name in names]


@dataclass(frozen=True)
class ContainerStatus:
    role: str
    name: str
    exists: bool
    state: str = "missing"  # running, exited, restarting, created, ...
    health: str = "-"  # healthy, unhealthy, starting, or - (no health check / not running)
    restarts: int = 0
    exit_code: int = 0
    image: str = ""
    health_output: str = ""
    pid: int = 0  # the container's first process, as the host sees it (0 when not running)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def healthy(self) -> bool:
        return self.running and self.health in ("healthy", "-")

    def line(self) -> str:
        state = self.state if self.state != "exited" else f"exited ({self.exit_code})"
        health = self.health if self.running else "-"
        row = f"{self.name:<32} {state:<12} {health:<10} {self.restarts:>8}  {self.image}"
        if self.running and self.health == "unhealthy" and self.health_output:
            row += f"\n{'':<32} last check: {self.health_output}"
        return row.rstrip()
