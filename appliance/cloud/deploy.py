"""appliance deploy: the four servers on OpenStack (Chameleon), booted from the baked images.

Order (topology.DEPLOY_ORDER): a Neutron port per server is made first, so every address is known
before any server boots; then mongodb and ml-server, then kafka (broker + consumers need both),
then producer (needs kafka). Each server gets `appliance userdata` with the real peer addresses,
from the same plan (appliance.cloud.plan) the local providers of `appliance cloud` boot.

Security groups: one per image; each opens only the ports its peers use (27017 and 8000 to the
kafka VM's group, 9092 to the producer's and kafka's), plus SSH and the service ports to
--admin-cidr when given (for testinfra and the health checks from this machine).

A server counts as up when it is ACTIVE, its console shows cloud-init's final message, and (with
--admin-cidr) its port answers: MongoDB and Kafka accept a TCP connection, the ml-server's
/healthz returns 200. Everything is tagged with the deployment name; `appliance destroy` removes it.
The SDK comes with the `cloud` extra: pip install -e '.[cloud]'.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.cloud import credentials, plan, topology, transport, userdata
from appliance.cloud.openstack_resources import ensure_keypair, ensure_security_groups, find_image
from appliance.cloud.readiness import console_says_finished, health_check, wait_until
from appliance.config import ConfigError

log = logging.getLogger(__name__)

STATE_DIR = Path("build/deploy")
META_DEPLOYMENT = "appliance_deployment"
META_ROLE = "appliance_role"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--network", required=True, help="network the servers join (name or ID)")
    parser.add_argument("--flavor", default="m1.medium", help="flavor for every server")
    parser.add_argument(
        "--flavor-for",
        action="append",
        default=[],
        metavar="ROLE=FLAVOR",
        help="another flavor for one image, e.g. ml-server=m1.large (repeatable)",
    )
    parser.add_argument(
        "--image-version",
        default=None,
        help="pick images named appliance-ROLE-VERSION-* (newest first); default: this package's",
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="ROLE=NAME",
        help="use this image (name or ID) for ROLE instead (repeatable)",
    )
    parser.add_argument("--key-name", required=True, help="Nova key pair for SSH")
    parser.add_argument(
        "--public-key", help="create --key-name from this public key file when it does not exist"
    )
    parser.add_argument(
        "--admin-cidr",
        help="CIDR (e.g. your address/32) let in to SSH and the service ports; enables the "
        "health checks from this machine",
    )
    parser.add_argument(
        "--floating-ip-network", help="take a floating IP for each server from this network"
    )
    userdata.add_setting_arguments(parser, "every env file", f"{STATE_DIR}/NAME.credentials.env")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds to wait for each server to be up"
    )
    parser.add_argument(
        "--poll", type=float, default=5, help="seconds between checks while waiting"
    )


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cloud",
        default=os.environ.get("OS_CLOUD"),
        help="clouds.yaml entry (default $OS_CLOUD; without it the OS_* variables of an openrc)",
    )
    parser.add_argument(
        "--name", default="appliance", help="deployment name: prefix of every resource it makes"
    )


def connect(args: argparse.Namespace) -> Any:
    try:
        import openstack
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("openstacksdk is not installed: pip install -e '.[cloud]'") from None
    return openstack.connect(cloud=args.cloud) if args.cloud else openstack.connect()


@dataclass
class Member:
    role: str
    port_id: str = ""
    address: str = ""
    server_id: str = ""
    floating_ip: str = ""
    image: str = ""
    status: str = ""
    created: list[str] = field(default_factory=list)


def pairs(items: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        role, sep, value = item.partition("=")
        if not sep or role not in topology.ROLES or not value:
            raise ConfigError(
                f"{option} {item!r}: expected ROLE=VALUE, ROLE one of {', '.join(topology.ROLES)}"
            )
        out[role] = value
    return out


def check_name(name: str) -> str:
    if not re.match(r"^[a-z][a-z0-9-]{0,40}$", name):
        raise ConfigError(f"--name {name!r}: lower-case letters, digits and dashes")
    return name


def ensure_port(conn: Any, name: str, member: Member, network_id: str, group_id: str) -> None:
    port_name = f"{name}-{member.role}"
    port = conn.network.find_port(port_name, ignore_missing=True)
    if port is None:
        port = conn.network.create_port(
            network_id=network_id, name=port_name, security_group_ids=[group_id]
        )
        member.created.append(f"port:{port.id}")
        log.info("created port %s", port_name)
    member.port_id = port.id
    ips = [ip["ip_address"] for ip in port.fixed_ips or []]
    if not ips:
        raise RuntimeError(f"port {port_name} has no fixed IP")
    # An IPv4 address when there is one: the containers' settings use it.
    member.address = next((ip for ip in ips if ":" not in ip), ips[0])


def state_path(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def credentials_path(name: str) -> Path:
    return STATE_DIR / f"{name}.credentials.env"


def save_state(name: str, members: dict[str, Member], created: list[dict[str, str]]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    data = {"name": name, "members": {r: asdict(m) for r, m in members.items()}, "created": created}
    state_path(name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def deploy(conn: Any, args: argparse.Namespace) -> dict[str, Member]:
    name = check_name(args.name)
    version = args.image_version or _package_version()
    images = pairs(args.image, "--image")
    flavors = pairs(args.flavor_for, "--flavor-for")
    settings = userdata.parse_settings(args.settings)
    password = os.environ.get("APPLIANCE_MONGODB_PASSWORD") if args.mongodb_user else None
    if args.mongodb_user and not password:
        raise ConfigError("--mongodb-user needs the password in $APPLIANCE_MONGODB_PASSWORD")
    credentials_file = args.credentials or credentials_path(name)
    creds = credentials.resolve(args.mongodb_user, password, credentials_file, args.no_mongodb_auth)
    tls = transport.resolve(credentials_file, args.no_tls)

    # Look everything up before creating anything: a typo fails here, not half-way.
    network = conn.network.find_network(args.network, ignore_missing=True)
    if network is None:
        raise ConfigError(f"--network {args.network!r}: no such network")
    flavor_ids = {}
    for role in topology.DEPLOY_ORDER:
        wanted = flavors.get(role, args.flavor)
        flavor = conn.compute.find_flavor(wanted, ignore_missing=True)
        if flavor is None:
            raise ConfigError(f"flavor {wanted!r} (for {role}) does not exist")
        flavor_ids[role] = flavor.id
    image_ids = {
        role: find_image(conn, role, version, images.get(role)) for role in topology.DEPLOY_ORDER
    }
    floating_network = None
    if args.floating_ip_network:
        floating_network = conn.network.find_network(args.floating_ip_network, ignore_missing=True)
        if floating_network is None:
            raise ConfigError(
                f"--floating-ip-network {args.floating_ip_network!r}: no such network"
            )

    created: list[dict[str, str]] = []
    members = {role: Member(role) for role in topology.DEPLOY_ORDER}
    try:
        ensure_keypair(conn, args, created)
        groups = ensure_security_groups(conn, name, args.admin_cidr, created)
        for member in members.values():
            ensure_port(conn, name, member, network.id, groups[member.role])
        boots = plan.make_plan(
            name,
            {role: member.address for role, member in members.items()},
            **credentials.as_options(creds),
            tls=tls,
            settings=settings,
        ).boots
        for boot in boots:
            role, member = boot.role, members[boot.role]
            member.image = image_ids[role].name
            create_server(
                conn,
                name,
                member,
                image_ids[role].id,
                flavor_ids[role],
                args.key_name,
                boot.user_data,
            )
            if floating_network is not None:
                attach_floating_ip(conn, member, floating_network.id, created)
            save_state(name, members, created)
            wait_up(conn, member, args)
            save_state(name, members, created)
    finally:
        save_state(name, members, created)
    return members


def create_server(
    conn: Any, name: str, member: Member, image_id: str, flavor_id: str, key_name: str, text: str
) -> None:
    server_name = f"{name}-{member.role}"
    server = conn.compute.find_server(server_name, ignore_missing=True)
    if server is None:
        server = conn.compute.create_server(
            name=server_name,
            image_id=image_id,
            flavor_id=flavor_id,
            networks=[{"port": member.port_id}],
            key_name=key_name,
            user_data=base64.b64encode(text.encode()).decode("ascii"),
            metadata={META_DEPLOYMENT: name, META_ROLE: member.role},
        )
        member.created.append(f"server:{server.id}")
        log.info("creating server %s (%s, %s)", server_name, member.address, member.image)
    else:
        log.info("server %s exists already; waiting for it", server_name)
    member.server_id = server.id


def attach_floating_ip(
    conn: Any, member: Member, network_id: str, created: list[dict[str, str]]
) -> None:
    existing = list(conn.network.ips(port_id=member.port_id))
    ip = (
        existing[0]
        if existing
        else conn.network.create_ip(floating_network_id=network_id, port_id=member.port_id)
    )
    if not existing:
        created.append({"type": "floating_ip", "id": ip.id, "address": ip.floating_ip_address})
    member.floating_ip = ip.floating_ip_address


def wait_up(conn: Any, member: Member, args: argparse.Namespace) -> None:
    role = member.role
    start = time.monotonic()
    server = conn.compute.get_server(member.server_id)
    server = conn.compute.wait_for_server(
        server, status="ACTIVE", failures=["ERROR"], interval=args.poll, wait=args.timeout
    )
    member.status = "ACTIVE"
    print(f"{role}: ACTIVE at {member.address} after {time.monotonic() - start:.0f} s", flush=True)
    remaining = max(args.timeout - (time.monotonic() - start), 1)
    wait_until(
        f"{role}: cloud-init's final message on the console",
        lambda: console_says_finished(conn, member.server_id, role),
        remaining,
        args.poll,
    )
    member.status = "BOOTED"
    print(f"{role}: cloud-init finished after {time.monotonic() - start:.0f} s", flush=True)
    check = health_check(role, member.floating_ip or member.address) if args.admin_cidr else None
    if check is not None:
        remaining = max(args.timeout - (time.monotonic() - start), 1)
        wait_until(f"{role}: its service port", check, remaining, args.poll)
        member.status = "HEALTHY"
        print(f"{role}: healthy after {time.monotonic() - start:.0f} s", flush=True)


def _package_version() -> str:
    from appliance import __version__

    return __version__


def run(args: argparse.Namespace) -> int:
    conn = connect(args)
    members = deploy(conn, args)
    print(f"\ndeployment {args.name} (state in {state_path(args.name)}):")
    for role in topology.DEPLOY_ORDER:
        m = members[role]
        extra = f" floating {m.floating_ip}" if m.floating_ip else ""
        print(f"  {role:10} {m.status:8} {m.address}{extra}  server {m.server_id}  image {m.image}")
    if not args.admin_cidr:
        print(
            "  (ports were not checked from here: pass --admin-cidr to open them to this machine)"
        )
    return 0
