"""appliance userdata ROLE --kafka IP --mongodb IP --ml-server IP: an image's cloud-init user-data.

The #cloud-config writes /etc/appliance/appliance.env (mode 0600, root) with the peers' addresses;
the baked units start their containers once it exists (see DESIGN.md, boot contract).

    appliance userdata kafka --kafka 10.0.0.12 --mongodb 10.0.0.10 --ml-server 10.0.0.11 >kafka.yaml
    openstack server create --image appliance-kafka-0.1.0-abc1234 --user-data kafka.yaml ...
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__
from appliance.cloud import credentials, transport
from appliance.cloud.topology import ENV_FILE, ROLES, check_address, environment, tls_files
from appliance.config import ConfigError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# The default deployment's (`appliance deploy`'s default --name): the user-data this renders and
# the VMs that command boots share one password.
CREDENTIALS_FILE = Path("build/deploy/appliance.credentials.env")
# systemd-networkd reads .network files in lexical order: this one matches before a distribution's
# catch-all (Debian's 80-dhcp, netplan's 10-netplan-*).
NETWORK_FILE = "/etc/systemd/network/05-appliance-private.network"


@dataclass(frozen=True)
class StaticNic:
    """A fixed address for the NIC with this MAC, for networks without DHCP (the local VMs').

    Written as a systemd-networkd file: Debian 12 and Ubuntu 22.04 (netplan renders to networkd)
    both read it, whatever cloud-init's own network configuration does.
    """

    mac: str
    address: str  # CIDR, e.g. 10.213.57.12/24

    def __post_init__(self) -> None:
        if not _MAC.match(self.mac):
            raise ConfigError(f"--mac {self.mac!r}: expected six lower-case hex pairs")
        try:
            ipaddress.ip_interface(self.address)
        except ValueError:
            raise ConfigError(f"--address {self.address!r}: expected an address/prefix") from None
        if "/" not in self.address:
            raise ConfigError(f"--address {self.address!r}: give the prefix, e.g. /24")

    def unit(self) -> str:
        return (
            "[Match]\n"
            f"MACAddress={self.mac}\n\n"
            "[Network]\n"
            f"Address={self.address}\n"
            "LinkLocalAddressing=no\n"
            "IPv6AcceptRA=no\n\n"
            "[Link]\n"
            # The admin NIC (or the cloud's) decides when the VM is online.
            "RequiredForOnline=no\n"
        )


# Values that must never end up in a world-readable file or in a log line.
SECRET_KEYS = ("MONGODB_URI", "MONGO_INITDB_ROOT_PASSWORD", "KAFKA_PASSWORD")


def add_setting_arguments(
    parser: argparse.ArgumentParser, target: str, credentials_default: str
) -> None:
    """The MongoDB credentials and --set, shared by `appliance userdata` and `appliance deploy`."""
    parser.add_argument(
        "--mongodb-user",
        help="MongoDB user, with its password (default: the --credentials file's)",
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help="the deployment's MongoDB user and password, made here (0600) if missing "
        f"(default: {credentials_default})",
    )
    parser.add_argument(
        "--no-mongodb-auth",
        action="store_true",
        help="MongoDB without authentication (a private test network only)",
    )
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="Kafka in PLAINTEXT without a login and MongoDB without TLS (a private test network "
        "only); by default both use the deployment's CA and Kafka login, kept in the folder "
        "beside the --credentials file (NAME.tls/) and made there if missing",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"another setting for {target} (repeatable)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=list(ROLES), help="the image the user-data is for")
    parser.add_argument("--kafka", metavar="IP", help="the kafka VM's address")
    parser.add_argument("--mongodb", metavar="IP", help="the mongodb VM's address")
    parser.add_argument("--ml-server", metavar="IP", help="the ml-server VM's address")
    add_setting_arguments(parser, "the env file, e.g. DEVICE_ID=lobby", str(CREDENTIALS_FILE))
    parser.add_argument(
        "--mongodb-password",
        help="MongoDB password, with --mongodb-user (default: $APPLIANCE_MONGODB_PASSWORD)",
    )
    parser.add_argument("--hostname", help="the VM's host name (default: appliance-ROLE)")
    parser.add_argument(
        "--address",
        metavar="IP/PREFIX",
        help="a fixed address for the NIC --mac names (networks without DHCP; with --mac)",
    )
    parser.add_argument("--mac", help="the NIC that gets --address")
    parser.add_argument(
        "--ssh-key",
        action="append",
        default=[],
        metavar="FILE",
        help="a public key file let in as the image's default user (repeatable; a cloud's key "
        "pair does this on OpenStack)",
    )
    parser.add_argument("--output", "-o", help="write here instead of standard output")


def parse_settings(items: list[str]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.match(key):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with KEY like DEVICE_ID")
        check_value(key, value)
        settings[key] = value
    return settings


def check_value(key: str, value: str) -> None:
    # Docker's --env-file takes each line literally: a newline would start another setting.
    if "\n" in value or "\r" in value or "\0" in value:
        raise ConfigError(f"{key}: the value must be one line")


def env_file_text(role: str, env: dict[str, str]) -> str:
    lines = [f"# {role} settings, rendered by `appliance userdata` (appliance {__version__})."]
    for key, value in env.items():
        check_value(key, value)
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def render(
    role: str,
    peers: dict[str, str | None],
    *,
    mongodb_user: str | None = None,
    mongodb_password: str | None = None,
    tls: transport.Transport | None = None,
    settings: dict[str, str] | None = None,
    hostname: str | None = None,
    network: StaticNic | None = None,
    ssh_keys: list[str] | None = None,
) -> str:
    """The #cloud-config text for ROLE's VM. ConfigError names a missing or bad peer.

    With ``tls``, the VM also gets the deployment's CA certificate and, for a server, a fresh
    certificate and key for the address its peers dial, as root-only files under TLS_DIR.
    """
    checked = {
        name: check_address(f"--{name}", value) if value else None for name, value in peers.items()
    }
    env = environment(
        role,
        checked,
        mongodb_user=mongodb_user,
        mongodb_password=mongodb_password,
        transport=tls,
        extra=settings,
    )
    content = env_file_text(role, env)
    hostname = hostname or f"appliance-{role}"
    if not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", hostname):
        raise ConfigError(f"--hostname {hostname!r} is not a valid host name")
    # Hand-written YAML (no PyYAML needed): strings are JSON-quoted, which YAML reads as is, and
    # the file's content is a literal block.
    out = [
        "#cloud-config",
        f"# appliance {role} image: user-data rendered by `appliance userdata` ({__version__}).",
        f"hostname: {hostname}",
        "write_files:",
    ]
    # The TLS files first: the settings file, once written, starts the units (appliance-env.path)
    # and they need them.
    for path, pem in (tls_files(role, checked, tls) if tls else {}).items():
        out += [
            f"  - path: {path}",
            "    owner: root:root",
            # Keys and the certificates beside them: root's only. Each unit hands its container
            # a copy of the files it needs, owned by the container's user (check-env).
            "    permissions: '0600'",
            "    content: |",
            *(f"      {line}" for line in pem.splitlines()),
        ]
    out += [
        f"  - path: {ENV_FILE}",
        "    owner: root:root",
        # Always 0600: it can hold a MongoDB password, and only root (the units) reads it.
        "    permissions: '0600'",
        "    content: |",
        *(f"      {line}" for line in content.splitlines()),
    ]
    if network is not None:
        out += [
            f"  - path: {NETWORK_FILE}",
            "    owner: root:root",
            "    permissions: '0644'",
            "    content: |",
            *(f"      {line}" if line else "" for line in network.unit().splitlines()),
            # networkd saw no file for this NIC at boot: apply it now (later boots read it).
            "runcmd:",
            "  - [networkctl, reload]",
        ]
    if ssh_keys:
        out += ["ssh_authorized_keys:", *(f"  - {json.dumps(key.strip())}" for key in ssh_keys)]
    out += [
        f"final_message: {json.dumps(f'appliance {role}: cloud-init finished after $UPTIME s')}",
    ]
    return "\n".join(out) + "\n"


def read_public_key(path: str) -> str:
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--ssh-key {path}: {exc.strerror}") from None
    if not key.startswith(("ssh-", "ecdsa-", "sk-")) or "\n" in key:
        raise ConfigError(f"--ssh-key {path}: not one OpenSSH public key line")
    return key


def static_nic(address: str | None, mac: str | None) -> StaticNic | None:
    if bool(address) != bool(mac):
        raise ConfigError("--address and --mac go together")
    return StaticNic(mac.lower(), address) if address and mac else None


def run(args: argparse.Namespace) -> int:
    peers = {"kafka": args.kafka, "mongodb": args.mongodb, "ml-server": args.ml_server}
    password = args.mongodb_password or (
        os.environ.get("APPLIANCE_MONGODB_PASSWORD") if args.mongodb_user else None
    )
    credentials_file = args.credentials or CREDENTIALS_FILE
    creds = credentials.resolve(
        args.mongodb_user,
        password,
        credentials_file,
        args.no_mongodb_auth,
    )
    text = render(
        args.role,
        peers,
        **credentials.as_options(creds),
        tls=transport.resolve(credentials_file, args.no_tls),
        settings=parse_settings(args.settings),
        hostname=args.hostname,
        network=static_nic(args.address, args.mac),
        ssh_keys=[read_public_key(f) for f in args.ssh_key],
    )
    if args.output:
        credentials.write_private(Path(args.output), text)
    else:
        sys.stdout.write(text)
    return 0
