"""A deployment's transport security: the Kafka clients' login, and the CA that signs its servers.

Made once per deployment, in a folder (0700) beside its MongoDB credentials file, or taken from
there if you put your own in (`NAME.tls/` for `build/deploy/NAME.credentials.env`):

    kafka-password   the SCRAM-SHA-512 password of Kafka's one user, ``appliance``
    ca.pem, ca.key   the deployment's CA (pki.new_authority), which every client trusts alone

The servers' certificates are not kept: `appliance userdata` issues one from the CA whenever it
renders a server's user-data, for the address its peers dial (the kafka VM's SASL_SSL listener,
the mongodb VM's TLS listener). The VM gets it, its key and the CA's certificate through its
user-data only, as files under TLS_DIR (root, 0600). The CA's key never leaves this machine.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from appliance.cloud import pki
from appliance.cloud.credentials import require_private, write_private
from appliance.config import ConfigError

# On a VM, and at the same path in the containers that get them (read-only, one file each).
TLS_DIR = "/etc/appliance/tls"
CA_NAME = "ca.pem"
KAFKA_USER = "appliance"
PASSWORD_NAME = "kafka-password"
CA_KEY_NAME = "ca.key"


@dataclass(frozen=True)
class Transport:
    kafka_password: str = field(repr=False)
    authority: pki.Pair = field(repr=False)
    kafka_user: str = KAFKA_USER


def folder_for(credentials_file: Path) -> Path:
    """``build/deploy/NAME.credentials.env`` -> ``build/deploy/NAME.tls``."""
    name = credentials_file.name
    stem = name.removesuffix(".credentials.env") if name.endswith(".credentials.env") else name
    return credentials_file.with_name(f"{stem}.tls")


def _private(path: Path) -> Path:
    return require_private(path, "is secret", "make a new one")


def load_or_create(folder: Path, common_name: str = "appliance deployment CA") -> Transport:
    """The folder's login and CA, each made on first use (a CA brought along is kept)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    password_file = folder / PASSWORD_NAME
    if not password_file.exists():
        write_private(password_file, secrets.token_urlsafe(24) + "\n")
    cert_file, key_file = folder / CA_NAME, folder / CA_KEY_NAME
    if cert_file.exists() != key_file.exists():
        raise ConfigError(f"{folder}: {CA_NAME} and {CA_KEY_NAME} go together; one is missing")
    if not cert_file.exists():
        pki.write_authority(folder, pki.new_authority(common_name))
    password = _private(password_file).read_text(encoding="utf-8").strip()
    if not password:
        raise ConfigError(f"{password_file} is empty")
    authority = pki.Pair(cert_file.read_bytes(), _private(key_file).read_bytes())
    return Transport(password, authority)


def resolve(credentials_file: Path, no_tls: bool = False) -> Transport | None:
    """What a command line asks for: none with --no-tls, else the deployment's (made if new)."""
    return None if no_tls else load_or_create(folder_for(credentials_file))


# In a local deployment's state folder (`appliance cloud`), beside credentials.LOCAL_FILE.
LOCAL_DIR = "tls"


def of_local_cloud(root: Path) -> Transport:
    return load_or_create(root / LOCAL_DIR, "appliance local cloud CA")


def local_ca_file(root: Path) -> Path:
    """A local deployment CA's certificate (made if new): what a client here trusts."""
    of_local_cloud(root)
    return root / LOCAL_DIR / CA_NAME


def server_pem(transport: Transport, common_name: str, hosts: list[str]) -> str:
    """A server's key, its certificate for ``hosts`` and the CA's certificate, in one PEM: what
    Kafka's PEM keystore and mongod's --tlsCertificateKeyFile read (FerretDB reads it for both
    its certificate and its key)."""
    server = pki.issue(transport.authority, common_name, hosts)
    return (server.key_pem + server.cert_pem + transport.authority.cert_pem).decode()
