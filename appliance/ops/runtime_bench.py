"""`appliance bench runtimes`: the served model under TensorFlow, ONNX Runtime and OpenVINO.

One run, one process, the same images: img/s at each batch size (calls repeated for --seconds),
top-1 on the test split and how often each runtime's label equals TensorFlow's. The ONNX graph
comes from `appliance.ml.onnx_export` (written from the weights); OpenVINO reads it as is, in
float32 (its precision hint pinned: on a CPU with AMX it would run bfloat16 unasked), in
bfloat16, and in int8 after post-training quantization (NNCF) on class-balanced training images.
Needs the `runtimes` extra (`make bench-runtimes` installs it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
Predict = Callable[[np.ndarray], np.ndarray]
DEFAULT_OUT = Path("build/bench/runtimes")


@dataclass
class Row:
    runtime: str
    img_per_s: dict[int, float] = field(default_factory=dict)
    top1: float = 0.0
    agrees_with_tensorflow: float = 0.0
    prepare_s: float = 0.0


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("runtimes", help="TensorFlow vs ONNX Runtime vs OpenVINO fp32/bf16/int8")
    add = p.add_argument
    add("--model", help="model artifact (default: the shipped model)")
    add("--data", default="cifar10", help="cifar10, a folder or its .tar.gz (test and train)")
    add("--batches", type=int, nargs="+", default=[1, 16, 64], help="batch sizes timed")
    add("--seconds", type=float, default=3.0, help="measured seconds per batch size")
    add("--test-limit", type=int, help="score on a class-balanced subset (default: all)")
    add("--calibration-images", type=int, default=300, help="training images for int8")
    add("--threads", type=int, default=os.cpu_count() or 1, help="threads for each runtime")
    add("--runtimes", nargs="+", help="a subset, e.g. tensorflow onnxruntime")
    add("--out", type=Path, default=DEFAULT_OUT, help="folder for the ONNX file and the JSON")


def _onnxruntime(path: Path, threads: int) -> Predict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def _quantized(onnx_path: Path, calibration: np.ndarray):
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    data = nncf.Dataset(list(calibration[:, None]))  # one image per calibration step
    return nncf.quantize(
        model, data, subset_size=len(calibration), preset=nncf.QuantizationPreset.MIXED
    )


def throughput(predict: Predict, images: np.ndarray, batch: int, seconds: float) -> float:
    x = np.ascontiguousarray(images[:batch])
    predict(x)  # warm up (and let a runtime specialise for the shape)
    calls, began = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - began < seconds:
        predict(x)
        calls += 1
    return calls * batch / (time.perf_counter() - began)


def labels(predict: Predict, images: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [
        predict(np.ascontiguousarray(images[i : i + batch])) for i in range(0, len(images), batch)
    ]
    return np.concatenate(out).argmax(axis=1)


def run(args: argparse.Namespace) -> int:
    from appliance import datasets, model
    from appliance.ml import onnx_export
    from appliance.ml.evaluate import balanced_order, decode_samples, label_indices
    from appliance.server.backends import openvino_compiled, tensorflow_call

    path = args.model or str(model.shipped_path())
    loaded = model.load(path)
    net, meta = loaded.model, loaded.metadata
    size, classes = meta.input_size, meta.class_names
    test = datasets.load(args.data, "test")
    if args.test_limit:
        order = balanced_order(label_indices(test, classes), 0)[: args.test_limit]
        test = [test[i] for i in sorted(order)]
    images, truth = decode_samples(test, size), label_indices(test, classes)
    train = datasets.load(args.data, "train")
    pick = balanced_order(label_indices(train, classes), 1)[: args.calibration_images]
    calibration = decode_samples([train[i] for i in sorted(pick)], size)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = onnx_export.export(net, args.out / "model.onnx")

    builders: dict[str, Callable[[], Predict]] = {
        # The very calls the server makes on each backend.
        "tensorflow": lambda: tensorflow_call(loaded),
        "onnxruntime": lambda: _onnxruntime(onnx_path, args.threads),
        "openvino-fp32": lambda: openvino_compiled(str(onnx_path), args.threads, "f32"),
        "openvino-bf16": lambda: openvino_compiled(str(onnx_path), args.threads, "bf16"),
        "openvino-int8": lambda: openvino_compiled(
            _quantized(onnx_path, calibration), args.threads, "f32"
        ),
    }
    chosen = args.runtimes or list(builders)
    unknown = [name for name in chosen if name not in builders]
    if unknown:
        print(f"appliance bench runtimes: unknown {unknown}; choose from {list(builders)}")
        return 2
    rows: list[Row] = []
    reference: np.ndarray | None = None
    for name in chosen:
        began = time.perf_counter()
        predict = builders[name]()
        row = Row(name, prepare_s=time.perf_counter() - began)
        for batch in args.batches:
            row.img_per_s[batch] = throughput(predict, images, batch, args.seconds)
        predicted = labels(predict, images)
        if reference is None:
            reference = (
                predicted if name == "tensorflow" else labels(tensorflow_call(loaded), images)
            )
        row.top1 = float((predicted == truth).mean())
        row.agrees_with_tensorflow = float((predicted == reference).mean())
        log.info("%s: %s", name, row)
        rows.append(row)

    print(table(rows, args.batches, meta.model_id, len(images), args.threads))
    report = {
        "model": meta.model_id, "test_images": len(images), "threads": args.threads,
        "calibration_images": len(calibration), "rows": [asdict(r) for r in rows],
    }  # fmt: skip
    out = args.out / "runtimes.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} and {onnx_path}")
    return 0


def table(rows: list[Row], batches: list[int], model_id: str, images: int, threads: int) -> str:
    head = " | ".join(f"b={b} img/s" for b in batches)
    lines = [
        f"{model_id}, {images} test images, {threads} threads",
        f"| runtime | {head} | vs TF (b={batches[-1]}) | top-1 | same label as TF | prepare s |",
        "|---|" + "---|" * (len(batches) + 4),
    ]
    base = next((r.img_per_s[batches[-1]] for r in rows if r.runtime == "tensorflow"), None)
    for r in rows:
        speeds = " | ".join(f"{r.img_per_s[b]:.1f}" for b in batches)
        ratio = f"{r.img_per_s[batches[-1]] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r.runtime} | {speeds} | {ratio} | {100 * r.top1:.2f}% | "
            f"{100 * r.agrees_with_tensorflow:.1f}% | {r.prepare_s:.1f} |"
        )
    return "\n".join(lines)
