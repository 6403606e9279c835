"""appliance destroy: remove what `appliance deploy --name NAME` made.

Servers are found by their metadata (appliance_deployment=NAME), ports and security groups by name
(NAME-ROLE), floating IPs by the port they point at. The key pair goes only if deploy created it
(build/deploy/NAME.json says so). Running it twice is harmless: the second run finds nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from appliance.cloud import deploy, topology

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    deploy.add_connection_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds to wait for each server to go"
    )
    parser.add_argument(
        "--poll", type=float, default=2, help="seconds between checks while waiting"
    )
    parser.add_argument(
        "--keep-keypair", action="store_true", help="keep the key pair even if deploy made it"
    )


def destroy(
    conn: Any, name: str, *, timeout: float = 600, poll: float = 2, keep_keypair: bool = False
) -> list[str]:
    name = deploy.check_name(name)
    removed: list[str] = []
    servers = [
        s
        for s in conn.compute.servers(details=True)
        if (s.metadata or {}).get(deploy.META_DEPLOYMENT) == name
    ]
    for server in servers:
        conn.compute.delete_server(server)
        removed.append(f"server {server.name}")
    for server in servers:
        conn.compute.wait_for_delete(server, interval=poll, wait=timeout)
    for role in topology.ROLES:
        port = conn.network.find_port(f"{name}-{role}", ignore_missing=True)
        if port is None:
            continue
        for ip in conn.network.ips(port_id=port.id):
            conn.network.delete_ip(ip)
            removed.append(f"floating IP {ip.floating_ip_address}")
        conn.network.delete_port(port)
        removed.append(f"port {port.name}")
    for role in topology.ROLES:
        group = conn.network.find_security_group(f"{name}-{role}", ignore_missing=True)
        if group is not None:
            conn.network.delete_security_group(group)
            removed.append(f"security group {group.name}")
    state_file = deploy.state_path(name)
    if state_file.exists():
        state = json.loads(state_file.read_text(encoding="utf-8"))
        for item in state.get("created", []):
            if (
                item.get("type") == "keypair"
                and not keep_keypair
                and conn.compute.find_keypair(item["name"], ignore_missing=True) is not None
            ):
                conn.compute.delete_keypair(item["name"])
                removed.append(f"key pair {item['name']}")
        state_file.unlink()
    return removed


def run(args: argparse.Namespace) -> int:
    conn = deploy.connect(args)
    removed = destroy(
        conn, args.name, timeout=args.timeout, poll=args.poll, keep_keypair=args.keep_keypair
    )
    if removed:
        print(f"deployment {args.name}: removed " + ", ".join(removed))
    else:
        print(f"deployment {args.name}: nothing to remove")
    return 0
