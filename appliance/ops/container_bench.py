"""`appliance bench pipeline --containers`: the same open-loop steps against the container stack
(`make up`), so that what containers cost is a figure beside the local run's.

The stack's services advertise themselves by their names on the stack's network (``kafka:9092``),
which this host cannot resolve. So the host brings the stack up without its cameras and starts the
benchmark's sending and measuring half in a container on that network (the producer image, with
the stack's env file and the clients' CA), with the host's process table (``--pid host``): it reads
each container's CPU and memory from /proc as the local run reads its processes'. It writes every
step, latencies included, to a file the host reads back; the host prints the table and draws the
plots (the producer image has no matplotlib). The stack's own server, consumers, topics and
collection are measured; the benchmark's images stay in the collection, from cameras named
``bench-NN``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from appliance import __version__, datasets
from appliance.config import ConfigError, Settings
from appliance.ops import pipeline_report
from appliance.ops.stack import docker_cli, lifecycle
from appliance.ops.stack.model import (
    DEFAULT_ENV_FILE,
    DEFAULT_PROJECT,
    DEFAULT_UP_TIMEOUT_S,
    LABEL_STACK,
    PRODUCER,
    SERVICES,
    Stack,
    StackError,
)

# Inside the benchmark's container: where the host's output folder is mounted.
OUT_MOUNT = "/bench"
# The producer image's own copy of the CIFAR-10 test split (images/producer/Dockerfile).
BAKED_IMAGES = "/usr/share/appliance/cameras/cifar10-test.tar.gz"
# The benchmark's container reads MongoDB and Kafka as the DB consumer does: its TLS files.
CLIENT_ROLE = "consume-db"


def add_arguments(bench: argparse.ArgumentParser) -> None:
    group = bench.add_argument_group("the container stack")
    add = group.add_argument
    add(
        "--containers",
        action="store_true",
        help="benchmark the container stack (`make up`; started without its cameras if it is not "
        "up) instead of local processes; output under OUT/containers",
    )
    add("--project", default=DEFAULT_PROJECT, help=f"the stack's name (default {DEFAULT_PROJECT})")
    add(
        "--env-file",
        type=Path,
        default=DEFAULT_ENV_FILE,
        help=f"the stack's env file (default {DEFAULT_ENV_FILE})",
    )
    add("--tag", default=__version__, help=f"the images' tag (default {__version__})")
    # The half that runs inside the stack's network, started by the host half.
    add("--in-stack", action="store_true", help=argparse.SUPPRESS)
    add("--pids", default="", help=argparse.SUPPRESS)


def parse_pids(text: str) -> dict[str, int]:
    pids = {}
    for part in filter(None, text.split(",")):
        name, _, pid = part.partition("=")
        if not name or not pid.isdigit():
            raise ValueError(f"--pids must be NAME=PID,..., got {text!r}")
        pids[name] = int(pid)
    return pids


def run(args: argparse.Namespace, rates: list[float]) -> int:
    if args.in_stack:
        return measure_in_stack(args, rates)
    stack = Stack(project=args.project, tag=args.tag, env_file=args.env_file)
    out = (args.out / "containers").resolve()
    if not stack.env_file.is_file():
        print(
            f"bench pipeline: no env file at {stack.env_file}: `make up` makes it "
            f"(or `appliance stack env --out {stack.env_file}`)",
            file=sys.stderr,
        )
        return 2
    started = False
    try:
        started = not any(s.running for s in lifecycle.statuses(stack))
        lifecycle.up(stack, producer=False, timeout_s=DEFAULT_UP_TIMEOUT_S)
        cameras = docker_cli.inspect_container(stack, PRODUCER.role)
        if cameras.running:
            docker_cli.docker(stack, "rm", "--force", cameras.name)
            print(
                f"bench pipeline: removed the stack's cameras ({cameras.name}) so that only the "
                "benchmark sends; `make up` starts them again",
                file=sys.stderr,
            )
        argv = container_arguments(stack, args, container_pids(stack), out)
        out.mkdir(parents=True, exist_ok=True)
        raw = out / pipeline_report.RAW_NAME
        raw.unlink(missing_ok=True)
        docker_cli.docker(stack, "rm", "--force", stack.container("bench"), check=False)
        # The container's progress bar and messages come through on this terminal.
        code = subprocess.run([stack.docker, *argv], stdin=subprocess.DEVNULL).returncode
    except (StackError, ConfigError) as exc:
        print(f"bench pipeline: {exc}", file=sys.stderr)
        return 1
    finally:
        # A stack this run started goes again, whatever happened.
        if started:
            lifecycle.down(stack)
    if code != 0 or not raw.is_file():
        print(f"bench pipeline: the benchmark's container failed (exit {code})", file=sys.stderr)
        return code or 1
    extra = {"stack": "containers", "project": stack.project, "tag": stack.tag}
    pipeline_report.report(pipeline_report.read_raw(raw), out, extra)
    return 0


def container_pids(stack: Stack) -> dict[str, int]:
    """Each service container's first process (tini; the service is its child)."""
    pids = {}
    for service in SERVICES:
        status = docker_cli.inspect_container(stack, service.role)
        if not status.running or status.pid <= 0:
            raise StackError(f"{status.name} is not running ({status.state})")
        pids[service.role] = status.pid
    return pids


def container_arguments(
    stack: Stack, args: argparse.Namespace, pids: dict[str, int], out: Path
) -> list[str]:
    """`docker run` for the benchmark's half inside the stack's network."""
    env, mounts = lifecycle.producer_options(None if args.source == "cifar10" else args.source)
    source = env.get("PRODUCER_SOURCE", BAKED_IMAGES)
    mounts = [*mounts, *lifecycle.secret_mounts(stack, CLIENT_ROLE)]
    argv = [
        "run", "--rm", "--init",
        "--name", stack.container("bench"),
        "--network", stack.network,
        "--env-file", str(stack.env_file),
        "--label", f"{LABEL_STACK}={stack.project}",
        # The host's process table, to read the stack's processes' CPU and memory.
        "--pid", "host",
        # The files it writes are this user's.
        "--user", f"{os.getuid()}:{os.getgid()}",
        "--volume", f"{out}:{OUT_MOUNT}",
    ]  # fmt: skip
    for mount in mounts:
        argv += ["--volume", mount]
    argv += [
        stack.image(PRODUCER.image),
        "appliance", "bench", "pipeline", "--in-stack",
        "--pids", ",".join(f"{name}={pid}" for name, pid in pids.items()),
        "--rates", args.rates,
        "--step-seconds", f"{args.step_seconds:g}",
        "--cameras", str(args.cameras),
        "--source", source,
        "--drain-timeout", f"{args.drain_timeout:g}",
        "--out", OUT_MOUNT,
    ]  # fmt: skip
    if args.all_steps:
        argv.append("--all-steps")
    return argv


def measure_in_stack(args: argparse.Namespace, rates: list[float]) -> int:
    """Inside the stack's network: its settings from the env file, its topics and collection."""
    from pymongo import MongoClient

    from appliance.ops.pipeline_bench import measure_steps

    try:
        pids = parse_pids(args.pids)
        samples = datasets.load(args.source, "test")
        settings = Settings.from_env()
    except (ValueError, ConfigError, datasets.DatasetError) as exc:
        print(f"bench pipeline: {exc}", file=sys.stderr)
        return 2
    pids["bench (cameras)"] = os.getpid()
    client: MongoClient = MongoClient(settings.mongodb_uri)
    try:
        collection = client[settings.mongodb_database][settings.mongodb_collection]
        steps = measure_steps(settings, collection, samples, rates, args, pids)
    finally:
        client.close()
    pipeline_report.write_raw(args.out / pipeline_report.RAW_NAME, steps)
    return 0
