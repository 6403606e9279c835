"""The container stack's transport security: Kafka's login, its own CA, and the certificates of
the broker and of MongoDB.

Made once per stack, in a ``tls/`` folder beside the env file (0700), by cloud.transport (the
deployments' code): ``kafka-password``, ``ca.pem``, ``ca.key``; then ``kafka.pem`` and
``mongodb.pem``, the servers' PEM keystores (key, certificate, CA), for their names on the stack's
network. The containers get only what they need, each file mounted read-only on its own: every
client the CA's certificate, each server its keystore. The CA's key never leaves the host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.cloud import topology, transport
from appliance.cloud.credentials import write_private
from appliance.config import ConfigError

# Where the containers find the files (KAFKA_CA_FILE, KAFKA_KEYSTORE_FILE, ...).
CONTAINER_DIR = transport.TLS_DIR
CA_NAME = transport.CA_NAME
KAFKA_KEYSTORE = topology.KAFKA_KEYSTORE
MONGODB_KEYSTORE = topology.MONGODB_KEYSTORE
# The servers' names on the stack's network: what clients dial and the certificates name, and
# the uid each image reads its keystore as (images/*/Dockerfile).
SERVERS = {KAFKA_KEYSTORE: ("kafka", 10001), MONGODB_KEYSTORE: ("mongodb", 999)}
# The files each container gets when the stack speaks TLS.
FILES = {
    "kafka": [CA_NAME, KAFKA_KEYSTORE],
    "mongodb": [CA_NAME, MONGODB_KEYSTORE],
    "consume-db": [CA_NAME],
    "consume-inference": [CA_NAME],
    "producer": [CA_NAME],
    "ml-server": [],
}


@dataclass(frozen=True)
class StackTLS:
    folder: Path
    password: str = field(repr=False)

    @property
    def ca_file(self) -> Path:
        return self.folder / CA_NAME

    @property
    def keystore(self) -> Path:
        return self.folder / KAFKA_KEYSTORE

    @property
    def mongodb_keystore(self) -> Path:
        return self.folder / MONGODB_KEYSTORE


def folder_for(env_file: Path) -> Path:
    return env_file.parent / "tls"


def load_or_create(folder: Path) -> StackTLS:
    """The stack's login, CA and server keystores, made on first use; later calls keep them."""
    old_password = folder / "password"  # before the MongoDB TLS: the same login, renamed
    if old_password.exists() and not (folder / transport.PASSWORD_NAME).exists():
        old_password.rename(folder / transport.PASSWORD_NAME)
    made = transport.load_or_create(folder, "appliance stack CA")
    for name, (host, uid) in SERVERS.items():
        path = folder / name
        if not path.exists():
            write_private(path, transport.server_pem(made, host, [host, *topology.LOOPBACK_NAMES]))
        # Each keystore is its server's alone: the image's user reads it as the mounted file.
        if os.geteuid() == 0:
            os.chown(path, uid, uid)
    tls = StackTLS(folder, made.kafka_password)
    # A certificate is public: the clients' uid reads it.
    tls.ca_file.chmod(0o644)
    return tls


def settings(tls: StackTLS) -> dict[str, str]:
    """What the env file says for TLS: the same lines serve the servers and their clients."""
    ca = f"{CONTAINER_DIR}/{CA_NAME}"
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_ADVERTISED_LISTENERS": "SASL_SSL://kafka:9092",
        "KAFKA_USERNAME": transport.KAFKA_USER,
        "KAFKA_PASSWORD": tls.password,
        "KAFKA_CA_FILE": ca,
        "KAFKA_KEYSTORE_FILE": f"{CONTAINER_DIR}/{KAFKA_KEYSTORE}",
        "MONGODB_TLS_CERT_KEY_FILE": f"{CONTAINER_DIR}/{MONGODB_KEYSTORE}",
        "MONGODB_TLS_CA_FILE": ca,
    }


def in_use(env: Mapping[str, str]) -> bool:
    return env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper() == "SASL_SSL" or bool(
        env.get("MONGODB_TLS_CERT_KEY_FILE")
    )


def mounts(env: Mapping[str, str], env_file: Path, role: str) -> list[str]:
    """`--volume` arguments for one container: none unless the env file asks for TLS."""
    if not in_use(env):
        return []
    folder = folder_for(env_file).resolve()
    names = FILES.get(role, [])
    for name in names:
        # Docker would mount an empty folder in place of a missing file.
        if not (folder / name).is_file():
            raise ConfigError(
                f"{env_file} asks for TLS but {folder / name} is missing: "
                f"`appliance stack env --out {env_file}` makes the stack's login and certificates"
            )
    return [f"{folder / name}:{CONTAINER_DIR}/{name}:ro" for name in names]
