"""The ``appliance`` command: one subcommand per part of the pipeline.

Each subcommand lives in its own module, imported only when chosen (TensorFlow is slow to import),
and exposes ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from appliance import __version__
from appliance.config import ConfigError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "produce": ("appliance.pipeline.producer", "simulated cameras: send images to Kafka"),
    "serve": ("appliance.server.run", "run the ResNet50 inference server under Gunicorn"),
    "consume-inference": (
        "appliance.pipeline.consumer_inference",
        "label images through the server",
    ),
    "consume-db": ("appliance.pipeline.consumer_db", "store images and predictions in MongoDB"),
    "dataset": ("appliance.ops.dataset_cli", "pack a camera source's split into one .tar.gz"),
    "services": ("appliance.ops.services", "start/stop local Kafka and MongoDB-protocol server"),
    "pipeline": ("appliance.ops.local_pipeline", "run the whole pipeline here, report the counts"),
    "model": ("appliance.ml.model_cli", "create or inspect a model artifact"),
    "train": ("appliance.ml.train", "train the ResNet50 on CIFAR-10"),
    "evaluate": ("appliance.ml.evaluate", "top-1, per-class accuracy and confusion matrix"),
    "bench": ("appliance.ops.bench", "benchmarks that print figures"),
    "variants": ("appliance.ml.variants", "accuracy against speed of the ResNet50 variants"),
    "stack": ("appliance.ops.stack", "the pipeline as containers on one Docker host"),
    "userdata": ("appliance.cloud.userdata", "render an image's cloud-init user-data"),
    "deploy": ("appliance.cloud.deploy", "create the four servers on OpenStack"),
    "cloud": ("appliance.cloud.local", "the four images on this machine: QEMU VMs or containers"),
    "destroy": ("appliance.cloud.destroy", "remove the servers deploy created"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The first word that names a command (global options such as --log-level may come first).
    chosen = next((word for word in sys.argv[1:] if word in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(module=module)
        # Only the chosen subcommand's module is imported: `appliance --help` stays fast.
        if name == chosen:
            importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args()
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kafka-python logs every connection at INFO; its warnings still show.
    logging.getLogger("kafka").setLevel(max(logging.getLogger().level, logging.WARNING))
    try:
        return int(importlib.import_module(args.module).run(args) or 0)
    except ConfigError as exc:
        print(f"appliance {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
