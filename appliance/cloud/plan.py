"""What a deployment boots, in which order, with which user-data: one plan for every provider.

`appliance deploy` (OpenStack) and the local providers (`appliance cloud`: QEMU VMs on a private
switch, or systemd containers on a Docker network) all boot the four images from this plan, so a
local run exercises the same boot order, peers and user-data that a real cloud gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.cloud import topology, userdata
from appliance.cloud.transport import Transport


@dataclass(frozen=True)
class Boot:
    role: str
    hostname: str
    address: str  # on the deployment's network: what the peers' settings name
    user_data: str  # the #cloud-config text


@dataclass
class Plan:
    name: str
    boots: list[Boot] = field(default_factory=list)

    def by_role(self) -> dict[str, Boot]:
        return {b.role: b for b in self.boots}


def order(first: tuple[str, ...] = ()) -> tuple[str, ...]:
    """topology.DEPLOY_ORDER, with ``first`` moved ahead (to boot a peer late, on purpose)."""
    for role in first:
        if role not in topology.ROLES:
            raise ValueError(f"unknown image {role!r}")
    return (*first, *(r for r in topology.DEPLOY_ORDER if r not in first))


def make_plan(
    name: str,
    addresses: dict[str, str],
    *,
    roles: tuple[str, ...] = topology.DEPLOY_ORDER,
    peers: dict[str, str] | None = None,
    mongodb_user: str | None = None,
    mongodb_password: str | None = None,
    tls: Transport | None = None,
    settings: dict[str, str] | None = None,
    role_settings: dict[str, dict[str, str]] | None = None,
    network: dict[str, userdata.StaticNic] | None = None,
    ssh_keys: list[str] | None = None,
) -> Plan:
    """User-data for each role, in ``roles`` order; each names its peers at ``addresses``.

    ``peers`` overrides the address one role's settings give for a peer (a wrong address, on
    purpose); ``role_settings`` adds settings for one role only (the cameras' count, say).
    """
    named = {role: addresses[role] for role in ("kafka", "mongodb", "ml-server")}
    named.update(peers or {})
    plan = Plan(name)
    for role in roles:
        extra = {**(settings or {}), **(role_settings or {}).get(role, {})}
        text = userdata.render(
            role,
            named,
            mongodb_user=mongodb_user,
            mongodb_password=mongodb_password,
            tls=tls,
            settings=extra,
            hostname=f"{name}-{role}",
            network=(network or {}).get(role),
            ssh_keys=ssh_keys,
        )
        plan.boots.append(Boot(role, f"{name}-{role}", addresses[role], text))
    return plan
