"""`appliance services up | down | status`: the subcommand's arguments and what each action
prints."""

from __future__ import annotations

import argparse
import os
import sys

from appliance.config import Settings
from appliance.ops.counts import inference_health, measure
from appliance.ops.services.config import (
    DEFAULT_KAFKA_CONTROLLER_PORT,
    DEFAULT_KAFKA_PORT,
    DEFAULT_MONGODB_PORT,
    DEFAULT_STATE_DIR,
    DEFAULT_UP_TIMEOUT_S,
    ENV_KAFKA_CONTROLLER_PORT,
    ENV_KAFKA_PORT,
    ENV_MONGODB_PORT,
    ENV_STATE_DIR,
    ServiceError,
    ServicesConfig,
)
from appliance.ops.services.lifecycle import down, status, up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["up", "down", "status"],
        help="up: start (or check) the services; down: stop them and delete their data; "
        "status: show each service's pid, address and health",
    )
    parser.add_argument(
        "--env",
        action="store_true",
        help="up: print only `export NAME=value` lines, for "
        '`eval "$(appliance services up --env)"`; the MongoDB password shows only here',
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_UP_TIMEOUT_S,
        metavar="SECONDS",
        help="up: how long to wait for the services to be healthy "
        f"(default {DEFAULT_UP_TIMEOUT_S:g})",
    )
    parser.epilog = (
        f"Ports and place: {ENV_KAFKA_PORT} (default {DEFAULT_KAFKA_PORT}), "
        f"{ENV_KAFKA_CONTROLLER_PORT} ({DEFAULT_KAFKA_CONTROLLER_PORT}), "
        f"{ENV_MONGODB_PORT} ({DEFAULT_MONGODB_PORT}), {ENV_STATE_DIR} ({DEFAULT_STATE_DIR})."
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "up":
            endpoints = up(timeout_s=args.timeout)
            # The password only where a shell takes it in (`eval "$(... up --env)"`).
            print("\n".join(endpoints.env_lines(export=args.env, reveal=args.env)), flush=True)
            return 0
        if args.action == "down":
            down()
            return 0
        return _print_status()
    except ServiceError as exc:
        print(f"appliance services {args.action}: {exc}", file=sys.stderr)
        return 1


def _print_status() -> int:
    config = ServicesConfig.from_env()
    statuses = status(config)
    if not statuses:
        print(f"services are not running (nothing in {config.state_dir})")
        return 1
    for entry in statuses:
        print(entry.line())
    # What flows through them: the same view as `appliance stack status`. Topics, groups and the
    # server's URL as the local `appliance serve` and consumers read them; these services' own
    # addresses unless the environment names others.
    settings = Settings.from_env({**config.endpoints.env(), **os.environ})
    print("\n".join(measure(settings).lines()))
    print(inference_health(settings.inference_url))
    return 0 if all(entry.healthy for entry in statuses) else 1
