"""`appliance model`: make, inspect, fetch or import a model artifact (``X.keras`` + ``X.json``)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from appliance import datasets, model
from appliance.evaluate import EvaluationError
from appliance.ml import gpu_import, pieces

DEFAULT_OUT = "build/model/resnet50.keras"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("init", help="save a freshly initialised ResNet50 (smoke runs, tests)")
    create.add_argument("path", help="artifact path, e.g. build/model/resnet50.keras")
    create.add_argument("--input-size", type=int, default=32)
    create.add_argument("--stem", choices=model.STEMS, default="stock")
    info = sub.add_parser("info", help="load an artifact, check it, print its metadata")
    info.add_argument("path")
    fetch = sub.add_parser(
        "fetch",
        help="fetch X.keras and X.json from a URL or path, checking the .keras file's sha256",
        description="Fetch X.keras and X.json (http, https, file URL or a path) into --out. "
        "The .keras file must have the given sha256 and the model must load and match its "
        "metadata; otherwise nothing is kept.",
    )
    fetch.add_argument("source", metavar="URL_OR_PATH", help="where X.keras is (X.json beside it)")
    fetch.add_argument("--sha256", required=True, help="sha256 of the .keras file (64 hex digits)")
    fetch.add_argument("--out", default=DEFAULT_OUT, help="where to put it (default %(default)s)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds per network read")
    imp = sub.add_parser(
        "import-weights",
        help="make an artifact of a GPU run's weights (python -m appliance.ml.gpu_train)",
        description="Check a GPU run's output folder (manifest, sha256 of every piece), rebuild "
        "the model, compare its outputs on the run's reference images with the GPU's, evaluate "
        "it on the test split and save it as an artifact.",
    )
    imp.add_argument("folder", type=Path, help="the run's --out: manifest.json, weights-NN.npz")
    imp.add_argument("--out", default=DEFAULT_OUT, help="artifact (default %(default)s)")
    imp.add_argument("--data", required=True, help="labelled images with a test split (.tar.gz)")
    imp.add_argument("--test-limit", type=int, help="a class-balanced subset of N test images")
    imp.add_argument(
        "--min-agreement", type=float, default=0.99, help="least reference label agreement"
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "init":
            metadata = model.create_untrained(args.path, args.input_size, args.stem)
            print(f"saved {model.artifact_paths(args.path)[0]} ({metadata.model_id})")
        elif args.action == "fetch":
            metadata = model.fetch(args.source, args.sha256, args.out, timeout=args.timeout)
            print(f"fetched {model.artifact_paths(args.out)[0]} ({metadata.model_id})")
        elif args.action == "import-weights":
            metadata = gpu_import.import_weights(
                args.folder, args.out, args.data, args.test_limit, args.min_agreement
            )
            print(f"saved {model.artifact_paths(args.out)[0]} ({metadata.model_id})")
        else:
            loaded = model.load(args.path)
            print(json.dumps({"model_id": loaded.model_id, **asdict(loaded.metadata)}, indent=2))
    except (
        model.ModelMetadataError,
        model.ModelFetchError,
        datasets.DatasetError,
        EvaluationError,
        pieces.WeightsError,
        gpu_import.GpuImportError,
    ) as exc:
        print(f"appliance model: {exc}", file=sys.stderr)
        return 2
    return 0
