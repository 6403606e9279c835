"""The four images, the peers each one needs, and the ports peers reach them on.

This is the one place that says who talks to whom: `userdata` renders each image's settings from
it, and `deploy` orders the servers and opens the security-group ports from it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote

from appliance.cloud.transport import CA_NAME, TLS_DIR, Transport, server_pem
from appliance.config import ConfigError

ENV_FILE = "/etc/appliance/appliance.env"

KAFKA_PORT = 9092
MONGODB_PORT = 27017
ML_SERVER_PORT = 8000

# The servers' PEM files (key, certificate, the CA's certificate) under TLS_DIR.
KAFKA_KEYSTORE = "kafka.pem"
MONGODB_KEYSTORE = "mongodb.pem"
# Names every server certificate carries besides the address its peers dial: the health checks
# inside its own host connect over loopback.
LOOPBACK_NAMES = ["localhost", "127.0.0.1"]


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
    tls_ca_file: str | None = None,
) -> str:
    """``direct``: for a client that reaches the server through a forwarded port or address
    other than the one it knows itself by. ``tls_ca_file``: TLS, trusting that CA alone."""
    options = ["authSource=admin"] if user and password else []
    options += ["directConnection=true"] if direct else []
    options += ["tls=true", f"tlsCAFile={quote(tls_ca_file)}"] if tls_ca_file else []
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user and password else ""
    query = f"/?{'&'.join(options)}" if options else ""
    return f"mongodb://{auth}{host_port(host, port)}{query}"


def environment(
    role: str,
    peers: dict[str, str | None],
    *,
    mongodb_user: str | None = None,
    mongodb_password: str | None = None,
    transport: Transport | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The settings /etc/appliance/appliance.env gets on ROLE's VM, from its peers' addresses.

    With ``transport``, Kafka's clients log in over SASL_SSL and MongoDB's over TLS, trusting the
    deployment's CA (the files tls_files writes). Raises ConfigError naming the first missing
    peer (as its command-line option).
    """
    if role not in ROLES:
        raise ConfigError(f"unknown image {role!r}; choose one of {', '.join(ROLES)}")
    for peer in ROLES[role].peers:
        if not peers.get(peer):
            why = PEER_REASONS.get((role, peer), "")
            raise ConfigError(f"--{peer} is required for the {role} image ({why})")
    if transport and role == "mongodb" and not peers.get("mongodb"):
        raise ConfigError(
            "--mongodb is required for the mongodb image with TLS (its certificate names the "
            "address the DB consumer dials; --no-tls for none)"
        )
    if bool(mongodb_user) != bool(mongodb_password):
        raise ConfigError("--mongodb-user and --mongodb-password go together")
    env: dict[str, str] = {}
    ca_file = f"{TLS_DIR}/{CA_NAME}"
    if role in ("producer", "kafka"):
        env["KAFKA_BOOTSTRAP_SERVERS"] = host_port(peers["kafka"], KAFKA_PORT)
        if transport:
            env["KAFKA_SECURITY_PROTOCOL"] = "SASL_SSL"
            env["KAFKA_USERNAME"] = transport.kafka_user
            env["KAFKA_PASSWORD"] = transport.kafka_password
            env["KAFKA_CA_FILE"] = ca_file
    if role == "kafka":
        protocol = "SASL_SSL" if transport else "PLAINTEXT"
        env["KAFKA_ADVERTISED_LISTENERS"] = f"{protocol}://{env['KAFKA_BOOTSTRAP_SERVERS']}"
        if transport:
            env["KAFKA_KEYSTORE_FILE"] = f"{TLS_DIR}/{KAFKA_KEYSTORE}"
        env["MONGODB_URI"] = mongodb_uri(
            peers["mongodb"],
            mongodb_user,
            mongodb_password,
            tls_ca_file=ca_file if transport else None,
        )
        env["INFERENCE_URL"] = f"http://{host_port(peers['ml-server'], ML_SERVER_PORT)}"
    elif role == "mongodb":
        if mongodb_user:
            env["MONGO_INITDB_ROOT_USERNAME"] = mongodb_user
            env["MONGO_INITDB_ROOT_PASSWORD"] = mongodb_password or ""
        if transport:
            env["MONGODB_TLS_CERT_KEY_FILE"] = f"{TLS_DIR}/{MONGODB_KEYSTORE}"
            env["MONGODB_TLS_CA_FILE"] = ca_file
    for key, value in (extra or {}).items():
        env[key] = value
    return env


def tls_files(role: str, peers: dict[str, str | None], transport: Transport) -> dict[str, str]:
    """The files (path under TLS_DIR -> PEM text) ROLE's VM gets with ``transport``: the CA's
    certificate for every client and server, a fresh certificate for each server."""
    files = {f"{TLS_DIR}/{CA_NAME}": transport.authority.cert_pem.decode()}
    keystores = {"kafka": KAFKA_KEYSTORE, "mongodb": MONGODB_KEYSTORE}
    if role in keystores:
        address = peers.get(role)
        if not address:  # environment() names the option first; this is for other callers
            raise ConfigError(f"--{role} is required for the {role} image's TLS certificate")
        hosts = [address, *LOOPBACK_NAMES]
        files[f"{TLS_DIR}/{keystores[role]}"] = server_pem(transport, role, hosts)
    elif role == "ml-server":
        return {}  # it speaks to no one; the inference consumer calls it over plain HTTP
    return files
