"""`appliance cloud up|status|down|start|stop|crash`: the four images on this machine.

Two providers boot the same plan (appliance.cloud.plan: the order, the peers, the user-data that
`appliance deploy` gives OpenStack):

- ``vm`` (default): the baked qcow2 images as QEMU VMs on a private VDE switch (localvm.py);
- ``containers``: the images' playbooks converged into systemd containers on one Docker network,
  their env files written from the user-data's write_files (localcontainers.py); cheaper, for CI.

    appliance cloud up                 # boot all four in order, wait until each is healthy
    appliance cloud up --first kafka --wait booted   # a peer booted late, on purpose
    appliance cloud crash kafka && appliance cloud start kafka
    appliance cloud down
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from appliance.cloud import plan as plans
from appliance.cloud import topology, userdata
from appliance.config import ConfigError

WAITS = ("none", "booted", "healthy")
# Each provider's private network and deployment name by default: both can run side by side, and
# the containers never take the names of `make up`'s (appliance-ROLE).
SUBNETS = {"vm": "10.213.57.0/24", "containers": "10.213.58.0/24"}
NAMES = {"vm": "appliance", "containers": "appliance-cluster"}


class Provider(Protocol):
    """What `up` and the multi-host checks need of a local provider."""

    root: Path

    def prepare(self, name: str, subnet: str) -> Any: ...
    def require(self) -> Any: ...
    def plan(self, state: Any, **options: Any) -> plans.Plan: ...
    def exists(self, state: Any, role: str) -> bool: ...
    def running(self, state: Any, role: str) -> bool: ...
    def create(self, state: Any, boot: plans.Boot) -> None: ...
    def start(self, state: Any, role: str) -> None: ...
    def crash(self, state: Any, role: str) -> None: ...
    def shutdown(self, state: Any, role: str, timeout: float = 300) -> None: ...
    def run(self, role: str, command: str, timeout: float = 120, check: bool = True) -> Any: ...
    def testinfra_host(self, role: str) -> tuple[str, dict[str, object]]: ...
    def mongodb_uri(self, state: Any) -> str: ...
    def describe(self, state: Any) -> list[str]: ...
    def down(self, name: str) -> None: ...


def provider(name: str, root: Path | None = None) -> Provider:
    if name == "vm":
        from appliance.cloud.localvm import LocalCloud

        return LocalCloud(root or Path("build/cloud"))
    if name == "containers":
        from appliance.cloud.localcontainers import ContainerCloud

        return ContainerCloud(root or Path("build/cloud-containers"))
    raise ConfigError(f"--provider must be vm or containers, not {name!r}")


def containers_of(role: str) -> list[str]:
    """The Docker containers a role's units run (appliance-NAME.service runs appliance-NAME)."""
    return [unit.removesuffix(".service") for unit in topology.ROLES[role].units]


def health_command(role: str) -> str:
    """Prints each of the role's units' state and its container's health, one per line."""
    parts = [
        f"echo {unit} $(systemctl is-active {unit}) "
        f"$(docker inspect -f '{{{{.State.Health.Status}}}}' {unit.removesuffix('.service')} "
        "2>/dev/null || echo absent)"
        for unit in topology.ROLES[role].units
    ]
    return "; ".join(parts)


def healthy(cloud: Provider, role: str) -> tuple[bool, str]:
    try:
        out = cloud.run(role, health_command(role), timeout=60, check=False).stdout
    except Exception as exc:  # the machine may not answer yet
        return False, str(exc)
    lines = out.strip().splitlines()
    ok = len(lines) == len(topology.ROLES[role].units) and all(
        line.split()[1:] == ["active", "healthy"] for line in lines
    )
    return ok, "; ".join(lines)


def wait_for(role: str, what: str, check, timeout: float, start: float, out=sys.stdout) -> str:
    """Poll ``check`` (returning (ok, detail)) until ok; prints progress every minute."""
    deadline = time.monotonic() + timeout
    report = time.monotonic() + 60
    while True:
        ok, detail = check()
        if ok:
            print(f"{role}: {what} after {time.monotonic() - start:.0f} s", file=out, flush=True)
            return detail
        if time.monotonic() > deadline:
            raise TimeoutError(f"{role}: not {what} after {timeout:.0f} s ({detail})")
        if time.monotonic() > report:
            print(f"{role}: ... {time.monotonic() - start:.0f} s, {detail[:160]}", file=out,
                  flush=True)  # fmt: skip
            report += 60
        time.sleep(5)


def wait_booted(cloud: Provider, role: str, timeout: float, start: float) -> None:
    def answers() -> tuple[bool, str]:
        try:
            result = cloud.run(role, "true", timeout=30, check=False)
        except Exception as exc:
            return False, str(exc)
        return result.returncode == 0, (result.stderr or "").strip()[-160:] or "no answer"

    def cloud_init_done() -> tuple[bool, str]:
        result = cloud.run(role, "cloud-init status --wait >/dev/null 2>&1; cloud-init status",
                           timeout=timeout, check=False)  # fmt: skip
        return "done" in result.stdout or "disabled" in result.stdout, result.stdout.strip()

    wait_for(role, "answering", answers, timeout, start)
    wait_for(role, "booted (cloud-init done)", cloud_init_done, timeout, start)


def bring_up(
    cloud: Provider,
    state: Any,
    plan: plans.Plan,
    wait: str = "healthy",
    timeout: float = 1800,
    out=sys.stdout,
) -> dict[str, float]:
    """Create and start each machine of the plan, in its order; returns seconds to ``wait``."""
    times: dict[str, float] = {}
    for boot in plan.boots:
        start = time.monotonic()
        if cloud.running(state, boot.role):
            print(f"{boot.role}: running already", file=out, flush=True)
        else:
            if not cloud.exists(state, boot.role):
                cloud.create(state, boot)
            cloud.start(state, boot.role)
            print(f"{boot.role}: started at {boot.address}", file=out, flush=True)
        if wait in ("booted", "healthy"):
            wait_booted(cloud, boot.role, timeout, start)
        if wait == "healthy":
            wait_for(boot.role, "healthy", lambda b=boot: healthy(cloud, b.role), timeout, start)
        times[boot.role] = time.monotonic() - start
    return times


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="vm", choices=("vm", "containers"))
    parser.add_argument("--root", type=Path, help="state folder (default build/cloud[-containers])")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="create and boot the four, in the topology's order")
    up.add_argument("--name", help=f"deployment name, host names NAME-ROLE (default: {NAMES})")
    up.add_argument("--subnet", help=f"the private network (default: {SUBNETS})")
    up.add_argument(
        "--first",
        action="append",
        default=[],
        choices=list(topology.ROLES),
        help="boot this image before the topology says (a late peer, on purpose; repeatable)",
    )
    up.add_argument("--wait", choices=WAITS, default="healthy", help="per machine, before the next")
    up.add_argument("--timeout", type=float, default=1800, help="seconds per machine")
    up.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another setting for every env file (repeatable)",
    )
    up.add_argument(
        "--set-for",
        action="append",
        default=[],
        metavar="ROLE:KEY=VALUE",
        help="a setting for one image's env file, e.g. producer:PRODUCER_RATE=1 (repeatable)",
    )
    sub.add_parser("status", help="the machines, their addresses and how to reach them")
    down = sub.add_parser("down", help="stop everything and remove the disks and state")
    down.add_argument(
        "--name",
        help="without state here, the containers deployment of this name is removed "
        f"(default: {NAMES['containers']})",
    )
    for action, text in (
        ("start", "boot a machine again from its disk"),
        ("stop", "a clean power-off from inside"),
        ("crash", "power off hard: kill the machine, no shutdown"),
    ):
        cmd = sub.add_parser(action, help=text)
        cmd.add_argument("role", choices=list(topology.ROLES))


def role_settings(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        role, sep, setting = item.partition(":")
        if not sep or role not in topology.ROLES:
            raise ConfigError(f"--set-for {item!r}: expected ROLE:KEY=VALUE")
        out.setdefault(role, {}).update(userdata.parse_settings([setting]))
    return out


def run(args: argparse.Namespace) -> int:
    cloud = provider(args.provider, args.root)
    if args.action == "down":
        cloud.down(args.name or NAMES[args.provider])
        print(f"removed the local cloud under {cloud.root}")
        return 0
    if args.action == "up":
        name = args.name or NAMES[args.provider]
        state = cloud.prepare(name, args.subnet or SUBNETS[args.provider])
        plan = cloud.plan(
            state,
            roles=plans.order(tuple(args.first)),
            settings=userdata.parse_settings(args.settings),
            role_settings=role_settings(args.set_for),
        )
        start = time.monotonic()
        times = bring_up(cloud, state, plan, args.wait, args.timeout)
        print(f"all {len(times)} {args.wait} after {time.monotonic() - start:.0f} s")
        print("\n".join(cloud.describe(state)))
        return 0
    state = cloud.require()
    if args.action == "status":
        print("\n".join(cloud.describe(state)))
        for role in topology.DEPLOY_ORDER:
            if cloud.running(state, role):
                print(f"  {role}: {healthy(cloud, role)[1]}")
        return 0
    action = {"start": cloud.start, "stop": cloud.shutdown, "crash": cloud.crash}[args.action]
    action(state, args.role)
    print(f"{args.role}: {args.action} done")
    return 0
