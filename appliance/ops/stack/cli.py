"""`appliance stack up | down | status | env | counts`: the subcommand's arguments and what each
action prints."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from appliance import __version__
from appliance.cloud import credentials
from appliance.config import ConfigError, Settings
from appliance.ops.counts import measure
from appliance.ops.stack import tls
from appliance.ops.stack.docker_cli import engine_problem
from appliance.ops.stack.envfile import write_env
from appliance.ops.stack.lifecycle import counts, down, statuses, up
from appliance.ops.stack.model import (
    CREDENTIALS_NAME,
    DEFAULT_ENV_FILE,
    DEFAULT_IMAGE_PREFIX,
    DEFAULT_PROJECT,
    DEFAULT_TEMPLATE,
    DEFAULT_UP_TIMEOUT_S,
    ENV_LINE,
    LOCAL_PEERS,
    PRODUCER,
    Stack,
    StackError,
    local_settings,
)


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
    env_p.add_argument(
        "--no-mongodb-auth",
        action="store_true",
        help=f"MongoDB without authentication (default: a user and password kept in "
        f"{CREDENTIALS_NAME} beside --out, made if missing)",
    )
    env_p.add_argument(
        "--no-tls",
        "--no-kafka-sasl",
        dest="no_tls",
        action="store_true",
        help="Kafka clients in PLAINTEXT and MongoDB without TLS (default: Kafka over SASL_SSL "
        "with a login, MongoDB over TLS, with a CA and the servers' certificates kept in tls/ "
        "beside --out, made if missing)",
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
    creds = None
    if not args.no_mongodb_auth:
        creds = credentials.load_or_create(args.out.with_name(CREDENTIALS_NAME))
    secure = None if args.no_tls else tls.load_or_create(tls.folder_for(args.out))
    overrides = local_settings(creds, secure)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not ENV_LINE.match(name):
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        overrides[name] = value
    path = write_env(args.template, args.out, overrides)
    peers = ", ".join(f"{k}={v}" for k, v in LOCAL_PEERS.items())
    auth = (
        f"MongoDB login in {args.out.with_name(CREDENTIALS_NAME)}" if creds else "no MongoDB auth"
    )
    sasl = (
        f"Kafka SASL_SSL and MongoDB TLS, login and certificates in {secure.folder}"
        if secure
        else "Kafka in PLAINTEXT, MongoDB without TLS"
    )
    print(f"wrote {path} (peers: {peers}; {auth}; {sasl})")
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
