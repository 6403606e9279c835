"""The container stack's Kafka login: its password, its own CA and the broker's certificate.

Made once per stack, in a ``tls/`` folder beside the env file (0700): ``password``, ``ca.pem``,
``ca.key`` and ``kafka.pem`` (the broker's PEM keystore). The containers get only what they need,
each file mounted read-only on its own: every client the CA's certificate, the broker its
keystore. The CA's key never leaves the host.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.cloud import pki
from appliance.cloud.credentials import write_private
from appliance.config import ConfigError

USER = "appliance"
# Where the containers find the files (KAFKA_CA_FILE, KAFKA_KEYSTORE_FILE).
CONTAINER_DIR = "/etc/appliance/tls"
CA_NAME = "ca.pem"
KEYSTORE_NAME = "kafka.pem"
# The images' own user (images/*/Dockerfile): the broker reads its keystore as this uid.
CONTAINER_UID = 10001
# The broker's name on the stack's network: what clients dial and the certificate names.
BROKER_HOST = "kafka"


@dataclass(frozen=True)
class KafkaLogin:
    folder: Path
    password: str = field(repr=False)

    @property
    def ca_file(self) -> Path:
        return self.folder / CA_NAME

    @property
    def keystore(self) -> Path:
        return self.folder / KEYSTORE_NAME


def folder_for(env_file: Path) -> Path:
    return env_file.parent / "tls"


def load_or_create(folder: Path) -> KafkaLogin:
    """The stack's login, made on first use; later calls return the same one."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    password_file = folder / "password"
    if not password_file.exists():
        write_private(password_file, secrets.token_urlsafe(24) + "\n")
    login = KafkaLogin(folder, password_file.read_text().strip())
    if not (login.ca_file.exists() and login.keystore.exists()):
        authority = pki.new_authority("appliance stack CA")
        pki.write_authority(folder, authority)
        server = pki.issue(authority, "kafka", [BROKER_HOST, "localhost"])
        pki.write_keystore(login.keystore, server, authority)
    # A certificate is public: the clients' uid reads it. The keystore is the broker's alone.
    login.ca_file.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(login.keystore, CONTAINER_UID, CONTAINER_UID)
    return login


def settings(login: KafkaLogin) -> dict[str, str]:
    """What the env file says for SASL_SSL: the same lines serve the broker and its clients."""
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_ADVERTISED_LISTENERS": f"SASL_SSL://{BROKER_HOST}:9092",
        "KAFKA_USERNAME": USER,
        "KAFKA_PASSWORD": login.password,
        "KAFKA_CA_FILE": f"{CONTAINER_DIR}/{CA_NAME}",
        "KAFKA_KEYSTORE_FILE": f"{CONTAINER_DIR}/{KEYSTORE_NAME}",
    }


def mounts(env: Mapping[str, str], env_file: Path, role: str) -> list[str]:
    """`--volume` arguments for one container: none unless the env file says SASL_SSL."""
    if env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper() != "SASL_SSL":
        return []
    if role in ("mongodb", "ml-server"):
        return []
    folder = folder_for(env_file).resolve()
    names = [CA_NAME, KEYSTORE_NAME] if role == "kafka" else [CA_NAME]
    for name in names:
        # Docker would mount an empty folder in place of a missing file.
        if not (folder / name).is_file():
            raise ConfigError(
                f"{env_file} says KAFKA_SECURITY_PROTOCOL=SASL_SSL but {folder / name} is "
                f"missing: `appliance stack env --out {env_file}` makes the stack's login"
            )
    return [f"{folder / name}:{CONTAINER_DIR}/{name}:ro" for name in names]
