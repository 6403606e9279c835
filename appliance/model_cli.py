"""`appliance model`: make or inspect a model artifact (``X.keras`` + ``X.json``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from appliance import model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("init", help="save a freshly initialised ResNet50 (smoke runs, tests)")
    create.add_argument("path", help="artifact path, e.g. build/model/resnet50.keras")
    create.add_argument("--input-size", type=int, default=32)
    create.add_argument("--stem", choices=model.STEMS, default="stock")
    info = sub.add_parser("info", help="load an artifact, check it, print its metadata")
    info.add_argument("path")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "init":
            metadata = model.create_untrained(args.path, args.input_size, args.stem)
            print(f"saved {model.artifact_paths(args.path)[0]} ({metadata.model_id})")
        else:
            loaded = model.load(args.path)
            print(json.dumps({"model_id": loaded.model_id, **asdict(loaded.metadata)}, indent=2))
    except model.ModelMetadataError as exc:
        print(f"appliance model: {exc}", file=sys.stderr)
        return 2
    return 0
