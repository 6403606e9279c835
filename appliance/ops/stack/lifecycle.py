"""Starting and removing the stack: each service's `docker run` arguments, starting a service
(keeping one that runs the current image), waiting for health, the cameras' options, `up`, `down`,
and the containers' statuses and the pipeline's counts."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from appliance.config import ConfigError
from appliance.ops.counts import Counts
from appliance.ops.stack import tls
from appliance.ops.stack.docker_cli import (
    container_image_id,
    docker,
    engine_problem,
    image_id,
    inspect_container,
    logs_tail,
    missing_images,
)
from appliance.ops.stack.envfile import load_env
from appliance.ops.stack.model import (
    CONSUMERS,
    DATA_MOUNT,
    DEFAULT_UP_TIMEOUT_S,
    INFRASTRUCTURE,
    LABEL_ROLE,
    LABEL_STACK,
    MAX_RESTARTS_DURING_UP,
    PRODUCER,
    PROGRESS_INTERVAL_S,
    SERVICES,
    ContainerStatus,
    Service,
    Stack,
    StackError,
)

log = logging.getLogger(__name__)


def run_arguments(
    stack: Stack, service: Service, extra_env: Mapping[str, str], mounts: Sequence[str]
) -> list[str]:
    """`docker run` arguments for one service: the env file, then only local overrides."""
    args = [
        "run",
        "--detach",
        "--name",
        stack.container(service.role),
        "--hostname",
        service.role,
        "--network",
        stack.network,
        "--network-alias",
        service.role,
        "--restart",
        service.restart,
        # tini as PID 1: signals reach the process and nothing is left a zombie.
        "--init",
        "--env-file",
        str(stack.env_file),
        "--label",
        f"{LABEL_STACK}={stack.project}",
        "--label",
        f"{LABEL_ROLE}={service.role}",
        "--log-opt",
        "max-size=20m",
        "--log-opt",
        "max-file=3",
    ]
    for name, value in extra_env.items():
        args += ["--env", f"{name}={value}"]
    for suffix, target in service.volumes:
        args += ["--volume", f"{stack.volume(suffix)}:{target}"]
    for mount in mounts:
        args += ["--volume", mount]
    return [*args, stack.image(service.image), *service.command]


def _ensure_network_and_volumes(stack: Stack, services: Iterable[Service]) -> None:
    if docker(stack, "network", "inspect", stack.network, check=False).returncode != 0:
        docker(
            stack, "network", "create", "--label", f"{LABEL_STACK}={stack.project}", stack.network
        )
    for service in services:
        for suffix, _target in service.volumes:
            name = stack.volume(suffix)
            if docker(stack, "volume", "inspect", name, check=False).returncode != 0:
                docker(stack, "volume", "create", "--label", f"{LABEL_STACK}={stack.project}", name)


def start_service(
    stack: Stack,
    service: Service,
    out: TextIO,
    extra_env: Mapping[str, str] | None = None,
    mounts: Sequence[str] = (),
    replace: bool = False,
) -> None:
    """Run the service's container; one left from before is kept if it runs the current image."""
    name = stack.container(service.role)
    current = container_image_id(stack, service.role)
    if current is not None:
        status = inspect_container(stack, service.role)
        wanted = image_id(stack, stack.image(service.image))
        if current == wanted and not replace and status.running:
            print(f"  {name}: already running", file=out, flush=True)
            return
        if current == wanted and not replace and service.long_running:
            print(f"  {name}: starting again", file=out, flush=True)
            docker(stack, "start", name)
            return
        docker(stack, "rm", "--force", name)
    docker(stack, *run_arguments(stack, service, extra_env or {}, mounts))
    print(f"  {name}: started ({stack.image(service.image)})", file=out, flush=True)


def wait_healthy(stack: Stack, roles: Sequence[str], timeout_s: float, out: TextIO) -> None:
    """Until every container is running and healthy; fail early on one that keeps failing."""
    start = time.monotonic()
    baseline = {role: inspect_container(stack, role).restarts for role in roles}
    next_report = PROGRESS_INTERVAL_S
    while True:
        statuses = [inspect_container(stack, role) for role in roles]
        waiting = [s for s in statuses if not s.healthy]
        if not waiting:
            return
        elapsed = time.monotonic() - start
        for status in waiting:
            failing = status.restarts - baseline[status.role] >= MAX_RESTARTS_DURING_UP
            if not status.exists or failing or status.state in ("exited", "dead"):
                why = "is missing" if not status.exists else f"is {status.state}"
                if failing:
                    why = f"restarted {status.restarts - baseline[status.role]} times"
                raise StackError(
                    f"{status.name} {why}; its last log lines:\n{logs_tail(stack, status.role)}"
                )
        if elapsed > timeout_s:
            names = ", ".join(f"{s.name} ({s.state}, {s.health})" for s in waiting)
            tails = "\n".join(f"  {s.name}:\n{logs_tail(stack, s.role)}" for s in waiting)
            raise StackError(f"not healthy after {timeout_s:.0f}s: {names}\n{tails}")
        if elapsed >= next_report:
            names = ", ".join(f"{s.role} ({s.health if s.running else s.state})" for s in waiting)
            print(f"  ... {elapsed:.0f}s, waiting for {names}", file=out, flush=True)
            next_report += PROGRESS_INTERVAL_S
        time.sleep(1.0)


def producer_options(
    source: str | None,
    count: int | None = None,
    rate: float | None = None,
    devices: int | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Environment overrides and mounts for the cameras: a local source file is mounted."""
    env: dict[str, str] = {}
    mounts: list[str] = []
    if source:
        path = Path(source)
        if path.exists():
            inside = f"{DATA_MOUNT}/{path.name}"
            mounts.append(f"{path.resolve()}:{inside}:ro")
            env["PRODUCER_SOURCE"] = inside
        else:
            env["PRODUCER_SOURCE"] = source
    if count is not None:
        env["PRODUCER_COUNT"] = str(count)
    if rate is not None:
        env["PRODUCER_RATE"] = f"{rate:g}"
    if devices is not None:
        env["PRODUCER_DEVICES"] = str(devices)
    return env, mounts


def start_producer(
    stack: Stack,
    out: TextIO,
    source: str | None = None,
    count: int | None = None,
    rate: float | None = None,
    devices: int | None = None,
) -> None:
    """(Re)start the cameras: always a fresh container, since each run is a new job."""
    env, mounts = producer_options(source, count, rate, devices)
    mounts += secret_mounts(stack, PRODUCER.role)
    _ensure_network_and_volumes(stack, [PRODUCER])
    start_service(stack, PRODUCER, out, env, mounts, replace=True)


def secret_mounts(stack: Stack, role: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The Kafka TLS files this role's container needs (none unless the env file says SASL_SSL);
    ``env``: the env file's values, when the caller has read them already."""
    try:
        env = load_env(stack.env_file) if env is None else env
        return tls.mounts(env, stack.env_file, role)
    except ConfigError as exc:
        raise StackError(str(exc)) from None


def up(
    stack: Stack,
    *,
    producer: bool = True,
    source: str | None = None,
    count: int | None = None,
    rate: float | None = None,
    devices: int | None = None,
    timeout_s: float = DEFAULT_UP_TIMEOUT_S,
    out: TextIO | None = None,
) -> None:
    out = out or sys.stderr
    problem = engine_problem(stack)
    if problem is not None:
        raise StackError(
            f"no Docker engine answers ({problem}); images/docker-engine.sh starts one"
        )
    missing = missing_images(stack)
    if missing:
        raise StackError(f"images missing: {', '.join(missing)}; build them with `make containers`")
    env = load_env(stack.env_file)
    began = time.monotonic()
    print(
        f"stack {stack.project}: images :{stack.tag}, env file {stack.env_file}, "
        f"network {stack.network}",
        file=out,
        flush=True,
    )
    _ensure_network_and_volumes(stack, SERVICES)
    by_role = {service.role: service for service in SERVICES}
    for role in (*INFRASTRUCTURE, "ml-server"):
        start_service(stack, by_role[role], out, mounts=secret_mounts(stack, role, env))
    # The consumers exit (and are restarted) while Kafka is away: start them once it answers.
    wait_healthy(stack, INFRASTRUCTURE, timeout_s, out)
    for role in CONSUMERS:
        start_service(stack, by_role[role], out, mounts=secret_mounts(stack, role, env))
    wait_healthy(stack, [service.role for service in SERVICES], timeout_s, out)
    print(
        f"stack {stack.project}: healthy in {time.monotonic() - began:.0f}s", file=out, flush=True
    )
    if producer:
        start_producer(stack, out, source, count, rate, devices)


def down(stack: Stack, *, volumes: bool = True, out: TextIO | None = None) -> bool:
    """Remove the stack's containers, network and (unless told not to) volumes."""
    out = out or sys.stderr
    label = f"label={LABEL_STACK}={stack.project}"
    found = False
    ids = docker(stack, "ps", "--all", "--quiet", "--filter", label).stdout.split()
    if ids:
        found = True
        print(f"removing {len(ids)} containers of stack {stack.project} ...", file=out, flush=True)
        docker(stack, "rm", "--force", "--volumes", *ids, timeout=180)
    networks = docker(stack, "network", "ls", "--quiet", "--filter", label).stdout.split()
    if networks:
        found = True
        docker(stack, "network", "rm", *networks)
    if volumes:
        names = docker(stack, "volume", "ls", "--quiet", "--filter", label).stdout.split()
        if names:
            found = True
            docker(stack, "volume", "rm", "--force", *names)
    print(
        f"stack {stack.project}: " + ("removed" if found else "nothing to remove"),
        file=out,
        flush=True,
    )
    return found


# --- status and counts ---------------------------------------------------------------------------


def statuses(stack: Stack) -> list[ContainerStatus]:
    return [inspect_container(stack, service.role) for service in (*SERVICES, PRODUCER)]


def counts(stack: Stack) -> Counts:
    """The counts, measured inside a running container of the stack (it has the network)."""
    command = ["appliance", "stack", "counts", "--json"]
    for role in ("kafka", "consume-db", "consume-inference"):
        if not inspect_container(stack, role).running:
            continue
        result = docker(stack, "exec", stack.container(role), *command, check=False, timeout=90)
        if result.returncode == 0:
            return Counts(**json.loads(result.stdout))
        log.debug("counts in %s failed: %s", role, result.stderr.strip())
    return Counts(errors=["no running container of the stack could measure the counts"])
