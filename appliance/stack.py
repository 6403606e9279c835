"""`appliance stack`: the whole pipeline as containers on one Docker host.

``up`` starts MongoDB, Kafka, the inference server, both consumers and (unless told not to) the
cameras, as the images from ``make containers``, on a Docker network of their own, each container
configured only through the env file the VMs get (``--env-file``) and restarted by Docker if it
fails. ``status`` shows each container's state and health and the pipeline's counts; ``down``
removes it all. ``env`` renders that env file for one host; ``counts`` is what ``status`` runs
inside a container of the stack (it needs the stack's network).

Containers are named ``<project>-<role>`` and reach each other by role (``kafka``, ``mongodb``,
``ml-server``): the rendered env file names those as the peers. Only the ``docker`` CLI is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from appliance import __version__
from appliance.config import ConfigError, Settings
from appliance.ops.counts import Counts, measure

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "appliance"
DEFAULT_IMAGE_PREFIX = "appliance"
DEFAULT_ENV_FILE = Path("build/stack/appliance.env")
DEFAULT_TEMPLATE = Path("images/appliance.env.example")
DEFAULT_UP_TIMEOUT_S = 420.0
LABEL_STACK = "appliance.stack"
LABEL_ROLE = "appliance.role"
PROGRESS_INTERVAL_S = 15.0
LOG_TAIL_LINES = 30
# A container Docker restarted this often while `up` waited is failing, not starting.
MAX_RESTARTS_DURING_UP = 3
# Inside the containers the source of the cameras' images is mounted here when it is a local file.
DATA_MOUNT = "/data"

# The peers as the stack's containers see each other (network aliases = roles).
LOCAL_PEERS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://kafka:9092",
    "MONGODB_URI": "mongodb://mongodb:27017",
    "INFERENCE_URL": "http://ml-server:8000",
}
REQUIRED_SETTINGS = ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI", "INFERENCE_URL")
ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$")


class StackError(RuntimeError):
    """Docker refused, an image is missing or a container failed; the message says which."""


@dataclass(frozen=True)
class Service:
    role: str  # container name suffix and network alias
    image: str  # image name without prefix and tag
    command: tuple[str, ...] = ()
    volumes: tuple[tuple[str, str], ...] = ()  # (volume name suffix, mount point)
    restart: str = "unless-stopped"
    long_running: bool = True


# In start order: what the others need first.
SERVICES: tuple[Service, ...] = (
    Service("mongodb", "mongodb", volumes=(("mongodb-data", "/data/db"),)),
    Service("kafka", "kafka", volumes=(("kafka-data", "/var/lib/kafka"),)),
    Service("ml-server", "ml-server"),
    # The kafka VM runs both consumers from its own image (tagged appliance/consumers too), as
    # containers of their own.
    Service("consume-db", "consumers", ("appliance", "consume-db")),
    Service("consume-inference", "consumers", ("appliance", "consume-inference")),
)
# The cameras: a job that ends when it has sent what it was told; restarted only if it fails.
PRODUCER = Service(
    "producer",
    "producer",
    volumes=(("producer-cache", "/var/cache/appliance"),),
    restart="on-failure:5",
    long_running=False,
)
INFRASTRUCTURE = ("mongodb", "kafka")
CONSUMERS = ("consume-db", "consume-inference")


@dataclass(frozen=True)
class Stack:
    project: str = DEFAULT_PROJECT
    tag: str = __version__
    env_file: Path = DEFAULT_ENV_FILE
    image_prefix: str = DEFAULT_IMAGE_PREFIX
    docker: str = "docker"

    @property
    def network(self) -> str:
        return self.project

    def container(self, role: str) -> str:
        return f"{self.project}-{role}"

    def volume(self, suffix: str) -> str:
        return f"{self.project}-{suffix}"

    def image(self, name: str) -> str:
        return f"{self.image_prefix}/{name}:{self.tag}"

    def images(self) -> list[str]:
        names = dict.fromkeys(s.image for s in (*SERVICES, PRODUCER))
        return [self.image(name) for name in names]


@dataclass(frozen=True)
class ContainerStatus:
    role: str
    name: str
    exists: bool
    state: str = "missing"  # running, exited, restarting, created, ...
    health: str = "-"  # healthy, unhealthy, starting, or - (no health check / not running)
    restarts: int = 0
    exit_code: int = 0
    image: str = ""
    health_output: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def healthy(self) -> bool:
        return self.running and self.health in ("healthy", "-")

    def line(self) -> str:
        state = self.state if self.state != "exited" else f"exited ({self.exit_code})"
        health = self.health if self.running else "-"
        row = f"{self.name:<32} {state:<12} {health:<10} {self.restarts:>8}  {self.image}"
        if self.running and self.health == "unhealthy" and self.health_output:
            row += f"\n{'':<32} last check: {self.health_output}"
        return row.rstrip()


# --- env file ------------------------------------------------------------------------------------


def parse_env_file(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """KEY=VALUE lines as `docker run --env-file` reads them (a bare KEY takes our value)."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        if match is None:
            raise ConfigError(f"env file line {number} is not KEY=VALUE: {raw!r}")
        name, value = match.group(1), match.group(2)
        if value is None:
            if name in env:
                values[name] = env[name]
            continue
        values[name] = value
    return values


def check_env(values: Mapping[str, str], path: Path) -> None:
    """The settings every container needs, and valid numbers, or a message naming the setting."""
    for name in REQUIRED_SETTINGS:
        if not values.get(name):
            raise ConfigError(f"{path}: {name} is not set")
    try:
        Settings.from_env(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def render_env(template: str, overrides: Mapping[str, str]) -> str:
    """The template with each overridden setting's value replaced (or added at the end)."""
    pending = dict(overrides)
    lines = []
    for line in template.splitlines():
        match = ENV_LINE.match(line)
        if match and match.group(1) in pending:
            name = match.group(1)
            line = f"{name}={pending.pop(name)}"
        lines.append(line)
    if pending:
        lines.append("")
        lines.append("# Added by `appliance stack env`.")
        lines += [f"{name}={value}" for name, value in pending.items()]
    return "\n".join(lines) + "\n"


def write_env(template: Path, out: Path, overrides: Mapping[str, str]) -> Path:
    text = render_env(template.read_text(), overrides)
    check_env(parse_env_file(text, {}), out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(text)
    partial.replace(out)
    return out


def load_env(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"env file {path} not found: `make up` renders it, or run "
            f"`appliance stack env --out {path}`"
        ) from None
    values = parse_env_file(text)
    check_env(values, path)
    return values


# --- docker --------------------------------------------------------------------------------------


def docker(
    stack: Stack, *args: str, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    command = [stack.docker, *args]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise StackError(
            f"`{stack.docker}` not found: install Docker (images/docker-engine.sh does)"
        ) from None
    except subprocess.TimeoutExpired:
        raise StackError(f"`{' '.join(command)}` did not finish in {timeout:.0f}s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise StackError(f"`{' '.join(command)}` failed (exit {result.returncode}): {detail}")
    return result


def engine_problem(stack: Stack) -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        result = docker(stack, "info", "--format", "{{.ServerVersion}}", check=False, timeout=20)
    except StackError as exc:
        return str(exc)
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
    return None


def missing_images(stack: Stack) -> list[str]:
    return [
        image
        for image in stack.images()
        if docker(stack, "image", "inspect", image, check=False).returncode != 0
    ]


def inspect_container(stack: Stack, role: str) -> ContainerStatus:
    name = stack.container(role)
    result = docker(stack, "container", "inspect", name, check=False)
    if result.returncode != 0:
        return ContainerStatus(role, name, exists=False)
    info: dict[str, Any] = json.loads(result.stdout)[0]
    state = info.get("State", {})
    health = state.get("Health") or {}
    checks = health.get("Log") or []
    output = " ".join(str(checks[-1].get("Output", "")).split()) if checks else ""
    return ContainerStatus(
        role=role,
        name=name,
        exists=True,
        state=str(state.get("Status", "unknown")),
        health=str(health.get("Status", "-")),
        restarts=int(info.get("RestartCount", 0)),
        exit_code=int(state.get("ExitCode", 0)),
        image=str(info.get("Config", {}).get("Image", "")),
        health_output=output[:300],
    )


def container_image_id(stack: Stack, role: str) -> str | None:
    result = docker(
        stack, "container", "inspect", "--format", "{{.Image}}", stack.container(role), check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def image_id(stack: Stack, image: str) -> str:
    return docker(stack, "image", "inspect", "--format", "{{.Id}}", image).stdout.strip()


def logs_tail(stack: Stack, role: str, lines: int = LOG_TAIL_LINES) -> str:
    result = docker(stack, "logs", "--tail", str(lines), stack.container(role), check=False)
    text = (result.stdout + result.stderr).strip() or "(no output)"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


# --- up / down -----------------------------------------------------------------------------------


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
    _ensure_network_and_volumes(stack, [PRODUCER])
    start_service(stack, PRODUCER, out, env, mounts, replace=True)


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
    load_env(stack.env_file)
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
        start_service(stack, by_role[role], out)
    # The consumers exit (and are restarted) while Kafka is away: start them once it answers.
    wait_healthy(stack, INFRASTRUCTURE, timeout_s, out)
    for role in CONSUMERS:
        start_service(stack, by_role[role], out)
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


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--project",
            default=DEFAULT_PROJECT,
            help=f"name prefix of the containers, network and volumes (default: {DEFAULT_PROJECT})",
        )
        p.add_argument("--docker", default="docker", help="the docker CLI (default: docker)")

    up_p = sub.add_parser("up", help="start the pipeline's containers and wait until healthy")
    common(up_p)
    up_p.add_argument(
        "--env-file",
        type=Path,
        default=DEFAULT_ENV_FILE,
        help=f"the settings, in /etc/appliance/appliance.env format (default: {DEFAULT_ENV_FILE})",
    )
    up_p.add_argument(
        "--tag", default=__version__, help=f"image tag (default: {__version__}, this version)"
    )
    up_p.add_argument(
        "--image-prefix",
        default=DEFAULT_IMAGE_PREFIX,
        help="image name prefix (default: appliance)",
    )
    up_p.add_argument(
        "--source",
        help="the cameras' images: a local .tar.gz or folder (mounted read-only), or 'cifar10' "
        "(default: PRODUCER_SOURCE from the env file)",
    )
    up_p.add_argument("--count", type=int, help="images to send (default: PRODUCER_COUNT)")
    up_p.add_argument("--rate", type=float, help="images/s per camera (default: PRODUCER_RATE)")
    up_p.add_argument("--devices", type=int, help="cameras (default: PRODUCER_DEVICES)")
    up_p.add_argument("--no-producer", action="store_true", help="start everything but the cameras")
    up_p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_UP_TIMEOUT_S,
        help=f"seconds to wait for health (default: {DEFAULT_UP_TIMEOUT_S:g})",
    )

    down_p = sub.add_parser("down", help="remove the containers, network and volumes")
    common(down_p)
    down_p.add_argument(
        "--keep-volumes", action="store_true", help="keep the Kafka and MongoDB data volumes"
    )

    status_p = sub.add_parser("status", help="containers' health and the pipeline's counts")
    common(status_p)
    status_p.add_argument("--json", action="store_true", help="print JSON")

    env_p = sub.add_parser("env", help="render the env file for one Docker host")
    env_p.add_argument(
        "--template",
        type=Path,
        default=DEFAULT_TEMPLATE,
        help=f"the example env file (default: {DEFAULT_TEMPLATE})",
    )
    env_p.add_argument(
        "--out", type=Path, default=DEFAULT_ENV_FILE, help=f"where (default: {DEFAULT_ENV_FILE})"
    )
    env_p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another setting to change (repeatable)",
    )

    counts_p = sub.add_parser(
        "counts", help="measure the counts from here (run inside a container of the stack)"
    )
    counts_p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "env":
            return _env(args)
        if args.action == "counts":
            measured = measure(Settings.from_env())
            print(json.dumps(asdict(measured)) if args.json else "\n".join(measured.lines()))
            return 0 if not measured.errors else 1
        stack = Stack(project=args.project, docker=args.docker)
        if args.action == "up":
            stack = Stack(
                project=args.project,
                tag=args.tag,
                env_file=args.env_file,
                image_prefix=args.image_prefix,
                docker=args.docker,
            )
            up(
                stack,
                producer=not args.no_producer,
                source=args.source,
                count=args.count,
                rate=args.rate,
                devices=args.devices,
                timeout_s=args.timeout,
            )
            print(f"see `appliance stack status --project {stack.project}` (or `make status`)")
            return 0
        if args.action == "down":
            down(stack, volumes=not args.keep_volumes)
            return 0
        return _status(stack, args.json)
    except StackError as exc:
        print(f"appliance stack {args.action}: {exc}", file=sys.stderr)
        return 1


def _env(args: argparse.Namespace) -> int:
    overrides = dict(LOCAL_PEERS)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not ENV_LINE.match(name):
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        overrides[name] = value
    path = write_env(args.template, args.out, overrides)
    print(f"wrote {path} (peers: {', '.join(f'{k}={v}' for k, v in LOCAL_PEERS.items())})")
    return 0


def _status(stack: Stack, as_json: bool) -> int:
    problem = engine_problem(stack)
    if problem is not None:
        raise StackError(f"no Docker engine answers ({problem})")
    found = statuses(stack)
    if not any(status.exists for status in found):
        print(f"stack {stack.project} is not running (no containers)")
        return 1
    measured = counts(stack)
    if as_json:
        print(json.dumps({"containers": [asdict(s) for s in found], "counts": asdict(measured)}))
    else:
        print(f"{'container':<32} {'state':<12} {'health':<10} {'restarts':>8}  image")
        for status in found:
            print(status.line())
        print()
        print("\n".join(measured.lines()))
    services_ok = all(status.healthy for status in found if status.role != PRODUCER.role)
    return 0 if services_ok and not measured.errors else 1
