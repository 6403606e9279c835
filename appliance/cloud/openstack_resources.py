"""The OpenStack resources a deployment needs besides its servers: the image to boot for each role,
the key pair, and one security group per image that opens only the ports its peers use.

Each ``ensure_*`` reuses what exists under the deployment's names and records in ``created`` what
it made, so `appliance destroy` removes exactly that.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from appliance.cloud import topology
from appliance.config import ConfigError

log = logging.getLogger(__name__)


def find_image(conn: Any, role: str, version: str, override: str | None) -> Any:
    if override:
        image = conn.image.find_image(override, ignore_missing=True)
        if image is None:
            raise ConfigError(f"--image {role}={override}: no such image")
        return image
    prefix = f"appliance-{role}-{version}-"
    candidates = [
        image
        for image in conn.image.images()
        if (image.name or "").startswith(prefix) and image.status == "active"
    ]
    if not candidates:
        raise ConfigError(
            f"no active image named {prefix}* (bake it: make image-{role} CLOUD=chameleon, "
            f"or name one with --image {role}=NAME)"
        )
    return max(candidates, key=lambda image: image.created_at or "")


def ensure_keypair(conn: Any, args: argparse.Namespace, created: list[dict[str, str]]) -> None:
    if conn.compute.find_keypair(args.key_name, ignore_missing=True) is not None:
        return
    if not args.public_key:
        raise ConfigError(
            f"key pair {args.key_name!r} does not exist; create it or pass --public-key FILE"
        )
    public_key = Path(args.public_key).read_text(encoding="utf-8").strip()
    conn.compute.create_keypair(name=args.key_name, public_key=public_key)
    created.append({"type": "keypair", "name": args.key_name})
    log.info("created key pair %s", args.key_name)


def ensure_security_groups(
    conn: Any, name: str, admin_cidr: str | None, created: list[dict[str, str]]
) -> dict[str, str]:
    """One group per image (created with its rules the first time); returns role -> group ID."""
    groups: dict[str, Any] = {}
    fresh: set[str] = set()
    for role in topology.ROLES:
        group_name = f"{name}-{role}"
        group = conn.network.find_security_group(group_name, ignore_missing=True)
        if group is None:
            group = conn.network.create_security_group(
                name=group_name,
                description=f"appliance {name}: {role} ({topology.ROLES[role].summary})",
            )
            created.append({"type": "security_group", "id": group.id, "name": group_name})
            fresh.add(role)
            log.info("created security group %s", group_name)
        groups[role] = group
    for role in fresh:
        for port, sources in topology.ROLES[role].ports:
            for source in sources:
                conn.network.create_security_group_rule(
                    security_group_id=groups[role].id,
                    direction="ingress",
                    ethertype="IPv4",
                    protocol="tcp",
                    port_range_min=port,
                    port_range_max=port,
                    remote_group_id=groups[source].id,
                )
            if admin_cidr:
                add_cidr_rule(conn, groups[role].id, port, admin_cidr)
        if admin_cidr:
            add_cidr_rule(conn, groups[role].id, 22, admin_cidr)
    return {role: group.id for role, group in groups.items()}


def add_cidr_rule(conn: Any, group_id: str, port: int, cidr: str) -> None:
    conn.network.create_security_group_rule(
        security_group_id=group_id,
        direction="ingress",
        ethertype="IPv6" if ":" in cidr else "IPv4",
        protocol="tcp",
        port_range_min=port,
        port_range_max=port,
        remote_ip_prefix=cidr,
    )
