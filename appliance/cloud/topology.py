"""The four images, the peers each one needs, and the ports peers reach them on.

This is the one place that says who talks to whom: `userdata` renders each image's settings from
it, and `deploy` orders the servers and opens the security-group ports from it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote

from appliance.config import ConfigError

ENV_FILE = "/etc/appliance/appliance.env"

KAFKA_PORT = 9092
MONGODB_PORT = 27017
ML_SERVER_PORT = 8000


@dataclass(frozen=True)
class Role:
    name: str
    # Peers whose address this image's settings need (the kafka image needs its own address too).
    peers: tuple[str, ...]
    # TCP ports it listens on, and which roles' VMs may connect to each.
    ports: tuple[tuple[int, tuple[str, ...]], ...]
    # systemd units it runs, as baked by the roles.
    units: tuple[str, ...]
    # What it is, for help texts.
    summary: str


ROLES: dict[str, Role] = {
    "mongodb": Role(
        "mongodb",
        (),
        ((MONGODB_PORT, ("kafka",)),),
        ("appliance-mongodb.service",),
        "MongoDB; the kafka VM's DB consumer writes to it",
    ),
    "ml-server": Role(
        "ml-server",
        (),
        ((ML_SERVER_PORT, ("kafka",)),),
        ("appliance-ml-server.service",),
        "the ResNet50 inference server; the kafka VM's inference consumer calls it",
    ),
    "kafka": Role(
        "kafka",
        ("kafka", "mongodb", "ml-server"),
        ((KAFKA_PORT, ("producer", "kafka")),),
        (
            "appliance-kafka.service",
            "appliance-consumer-db.service",
            "appliance-consumer-inference.service",
        ),
        "the broker plus the DB and inference consumers",
    ),
    "producer": Role(
        "producer",
        ("kafka",),
        (),
        ("appliance-producer.service",),
        "the simulated cameras; they send to Kafka",
    ),
}

# Creation order for deploy: every image's peers exist before it (kafka's own address is known
# from its port, created first).
DEPLOY_ORDER = ("mongodb", "ml-server", "kafka", "producer")

# Why each image needs each peer: the missing-peer message says it.
PEER_REASONS = {
    ("kafka", "kafka"): "the broker advertises this address to the cameras and the consumers",
    ("kafka", "mongodb"): "the DB consumer on the kafka VM writes to MongoDB there",
    ("kafka", "ml-server"): "the inference consumer on the kafka VM calls the server there",
    ("producer", "kafka"): "the cameras send their images to the broker there",
}

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


def check_address(option: str, value: str) -> str:
    """An IP address or DNS name as given on the command line; ConfigError names the option."""
    value = value.strip()
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(candidate)
        return candidate
    except ValueError:
        pass
    if _HOSTNAME.match(candidate) and not candidate.replace(".", "").isdigit():
        return candidate
    raise ConfigError(f"{option}: {value!r} is not an IP address or host name")


def host_port(host: str, port: int) -> str:
    """host:port, with IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mongodb_uri(
    host: str,
    user: str | None = None,
    password: str | None = None,
    *,
    port: int = MONGODB_PORT,
    direct: bool = False,
) -> str:
    """``direct``: for a client that reaches the server through a forwarded port or address
    other than the one it knows itself by."""
    options = ["authSource=admin"] if user and password else []
    options += ["directConnection=true"] if direct else []
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user and password else ""
    query = f"/?{'&'.join(options)}" if options else ""
    return f"mongodb://{auth}{host_port(host, port)}{query}"


def environment(
    role: str,
    peers: dict[str, str | None],
    *,
    mongodb_user: str | None = None,
    mongodb_password: str | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The settings /etc/appliance/appliance.env gets on ROLE's VM, from its peers' addresses.

    Raises ConfigError naming the first missing peer (as its command-line option).
    """
    if role not in ROLES:
        raise ConfigError(f"unknown image {role!r}; choose one of {', '.join(ROLES)}")
    for peer in ROLES[role].peers:
        if not peers.get(peer):
            why = PEER_REASONS.get((role, peer), "")
            raise ConfigError(f"--{peer} is required for the {role} image ({why})")
    if bool(mongodb_user) != bool(mongodb_password):
        raise ConfigError("--mongodb-user and --mongodb-password go together")
    env: dict[str, str] = {}
    if role == "producer":
        env["KAFKA_BOOTSTRAP_SERVERS"] = host_port(peers["kafka"], KAFKA_PORT)
    elif role == "kafka":
        kafka = host_port(peers["kafka"], KAFKA_PORT)
        env["KAFKA_BOOTSTRAP_SERVERS"] = kafka
        env["KAFKA_ADVERTISED_LISTENERS"] = f"PLAINTEXT://{kafka}"
        env["MONGODB_URI"] = mongodb_uri(peers["mongodb"], mongodb_user, mongodb_password)
        env["INFERENCE_URL"] = f"http://{host_port(peers['ml-server'], ML_SERVER_PORT)}"
    elif role == "mongodb" and mongodb_user:
        env["MONGO_INITDB_ROOT_USERNAME"] = mongodb_user
        env["MONGO_INITDB_ROOT_PASSWORD"] = mongodb_password or ""
    for key, value in (extra or {}).items():
        env[key] = value
    return env
