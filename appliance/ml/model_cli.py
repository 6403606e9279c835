"""`appliance model`: make, inspect, fetch, pack, export or import a model artifact (``X.keras``
or ``X.npz``, with ``X.json`` beside it; ``X.onnx``, the graph written from one)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from appliance import datasets, model
from appliance.ml import artifact_fetch, gpu_import, history_plot, pieces
from appliance.ml.evaluate import EvaluationError

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
    pack = sub.add_parser(
        "pack",
        help="an artifact's weights alone as X.npz, float16: small enough for git",
        description="Write SOURCE's weights as X.npz (float16 where they fit) with X.json beside "
        "it, then load it back through the normal path. With --data the packed model's test "
        "accuracy is measured and recorded (float16 weights round its outputs slightly).",
    )
    pack.add_argument("source", help="an artifact, X.keras with X.json beside it")
    pack.add_argument("--out", type=Path, required=True, help="the packed artifact, Y.npz")
    pack.add_argument("--data", help="labelled images with a test split, to measure accuracy on")
    graph = sub.add_parser(
        "export-onnx",
        help="an artifact as an ONNX graph (X.onnx + X.json), which the openvino backend serves",
        description="Write SOURCE's network as an ONNX graph, BatchNorm folded into the "
        "convolutions, with X.json beside it: SOURCE's metadata (the same model id) and the "
        "graph's sha256, which every load checks. The server runs it with BACKEND=openvino "
        "and needs no TensorFlow: the ml-server image ships this form.",
    )
    graph.add_argument("source", help="an artifact, X.keras or X.npz with X.json beside it")
    graph.add_argument("--out", type=Path, required=True, help="the graph, Y.onnx")
    history = sub.add_parser(
        "history",
        help="plot a training run's curve (accuracy, loss, learning rate per epoch) as a PNG",
        description="Plot the per-epoch history of a checkpoint folder (X.ckpt/, also while "
        "its run goes on) or of a trained artifact's metadata. A run writes X.ckpt/history.png "
        "itself after every epoch.",
    )
    history.add_argument("path", type=Path, help="X.ckpt/ or an artifact (X.keras, X.npz, X.onnx)")
    history.add_argument(
        "--out",
        type=Path,
        help="the PNG (default: X.ckpt/history.png, or build/history/NAME.png for an artifact, "
        "so that nothing lands in an image's model folder)",
    )
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
            metadata = artifact_fetch.fetch(
                args.source, args.sha256, args.out, timeout=args.timeout
            )
            print(f"fetched {model.artifact_paths(args.out)[0]} ({metadata.model_id})")
        elif args.action == "pack":
            metadata = pack(args.source, args.out, args.data)
            accuracy = metadata.test_accuracy
            measured = "" if accuracy is None else f", test accuracy {100 * accuracy:.2f}%"
            size = args.out.stat().st_size / 1e6
            print(f"saved {args.out} ({metadata.model_id}, {size:.1f} MB{measured})")
        elif args.action == "export-onnx":
            from appliance.ml import onnx_artifact

            metadata = onnx_artifact.export(args.source, args.out)
            size = args.out.stat().st_size / 1e6
            print(f"saved {args.out} ({metadata.model_id}, {size:.1f} MB)")
        elif args.action == "history":
            records = history_plot.read_history(args.path)
            out = args.out or history_plot.default_plot_path(args.path)
            history_plot.plot_history(records, out, str(args.path))
            print(f"saved {out} ({len(records)} epochs)")
        elif args.action == "import-weights":
            metadata = gpu_import.import_weights(
                args.folder, args.out, args.data, args.test_limit, args.min_agreement
            )
            print(f"saved {model.artifact_paths(args.out)[0]} ({metadata.model_id})")
        else:
            from appliance.server import backends  # a graph artifact is checked without Keras

            loaded = backends.load(args.path, threads=0)
            print(json.dumps({"model_id": loaded.model_id, **asdict(loaded.metadata)}, indent=2))
    except (
        model.ModelMetadataError,
        artifact_fetch.ModelFetchError,
        datasets.DatasetError,
        EvaluationError,
        pieces.WeightsError,
        gpu_import.GpuImportError,
        history_plot.HistoryError,
    ) as exc:
        print(f"appliance model: {exc}", file=sys.stderr)
        return 2
    return 0


def pack(source: str, out: Path, data: str | None) -> model.Metadata:
    """SOURCE's weights as ``out`` (.npz), loaded back; with ``data``, its test accuracy."""
    from appliance.ml.evaluate import evaluate

    if out.suffix != ".npz":
        raise model.ModelMetadataError(f"--out {out}: a packed artifact is a .npz file")
    model.refuse_source_metadata(
        out,
        source,
        f"pack into another name or folder (e.g. {out.with_name(out.stem + '-packed.npz')})",
    )
    loaded = model.load(source)
    before = loaded.metadata
    packed_from = {"model_sha256": before.model_sha256, "test_accuracy": before.test_accuracy}
    metadata = replace(
        before,
        model_sha256=None,
        test_accuracy=None,
        extra={**before.extra, "packed_from": packed_from, "weights": "float16 where they fit"},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(loaded.model, out, metadata)
    reloaded = model.load(out)  # through the path every user of the artifact takes
    if data:
        report = evaluate(
            reloaded.model, datasets.load(data, "test"), reloaded.class_names, reloaded.input_size
        )
        metadata.test_accuracy = report.top1
        metadata.extra["test_images"] = report.total
        model.write_metadata(out, metadata)
    return metadata
