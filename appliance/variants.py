"""``appliance variants``: accuracy against speed for the ResNet50 variants, measured here.

For each variant (stem x input size) it measures, on this machine:

- inference img/s at batch 1 and at a large batch (the model's direct call traced once, as the
  server runs it), for a few seconds each;
- training img/s (the training step ``appliance train`` compiles: same optimizer, loss, float32
  on a CPU) and the CPU seconds each image costs, from which it projects an epoch of CIFAR-10 and
  the whole schedule, both as measured and on an otherwise idle machine (all cores ours);
- optionally (``--accuracy-data``), a short training run on a subset and its test accuracy. On a
  CPU that run is necessarily short: it shows the pipeline works and how the variants start, not
  what they reach.

Wall-clock figures depend on what else the machine runs; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from appliance import model

log = logging.getLogger(__name__)

CIFAR10_TRAIN_IMAGES = 50_000
BUDGET_HOURS = 3.0


@dataclass
class Figures:
    name: str
    params: int
    infer: dict[int, float]  # batch -> img/s
    train_img_s: float
    train_cpu_s_per_img: float
    accuracy: float | None = None


def parse_variant(text: str) -> tuple[str, int]:
    stem, _, size = text.partition(":")
    if stem not in model.STEMS or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected STEM:SIZE with STEM in {model.STEMS}: {text}")
    return stem, int(size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--variants",
        type=parse_variant,
        nargs="+",
        default=[("stock", 32), ("cifar", 32)],
        metavar="STEM:SIZE",
        help="default: stock:32 cifar:32",
    )
    add("--batches", type=int, nargs="+", default=[1, 256], help="inference batch sizes")
    add("--seconds", type=float, default=3.0, help="measured seconds per inference figure")
    add("--train-batch", type=int, default=32, help="training batch size measured")
    add("--train-steps", type=int, default=3, help="timed training steps (after one untimed)")
    add("--epochs", type=int, default=30, help="the schedule to project (default 30 epochs)")
    add("--accuracy-data", help="also train briefly on this source and report test accuracy")
    add("--accuracy-limit", type=int, default=512, help="training images for the short run")
    add("--accuracy-epochs", type=int, default=2)
    add("--accuracy-test-limit", type=int, default=500)


def _inference(net, size: int, batch: int, seconds: float) -> float:
    import tensorflow as tf

    spec = tf.TensorSpec([None, size, size, 3], tf.uint8)
    call = tf.function(lambda x: net(x, training=False), input_signature=[spec])
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    call(images).numpy()  # trace and warm up
    calls, started = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - started < seconds:
        call(images).numpy()
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def _training(stem: str, size: int, batch: int, steps: int) -> tuple[float, float]:
    """(wall img/s, CPU seconds per image) of the training step ``appliance train`` compiles."""
    from appliance import train

    recipe = train.Recipe(
        stem=stem, input_size=size, epochs=30, batch_size=batch, peak_lr=0.1, warmup_epochs=2.0,
        momentum=0.9, weight_decay=5e-4, label_smoothing=0.1, seed=0, limit=None, val_split=0.0,
        data_sha256="",
    )  # fmt: skip
    net = train.build_compiled(recipe, steps_per_epoch=390, mixed=train.has_gpu())
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
    net.train_on_batch(x, y)  # trace
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        net.train_on_batch(x, y)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return steps * batch / wall, cpu / (steps * batch)


def _accuracy(stem: str, size: int, args: argparse.Namespace) -> float | None:
    import tempfile

    from appliance import train

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/{stem}{size}.keras"
        parser = argparse.ArgumentParser()
        train.add_arguments(parser)
        train_args = parser.parse_args(
            [
                *("--data", args.accuracy_data, "--out", out, "--stem", stem),
                *("--input-size", str(size), "--limit", str(args.accuracy_limit)),
                *("--epochs", str(args.accuracy_epochs), "--batch-size", "64"),
                *("--test-limit", str(args.accuracy_test_limit)),
            ]
        )
        if train.run(train_args) != 0:
            return None
        return model.read_metadata(out).test_accuracy


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def run(args: argparse.Namespace) -> int:
    import keras

    cores = os.cpu_count() or 1
    results: list[Figures] = []
    for stem, size in args.variants:
        name = f"{stem} stem, {size}x{size}"
        keras.mixed_precision.set_global_policy("float32")
        net = model.build(size, stem=stem)
        infer = {b: _inference(net, size, b, args.seconds) for b in args.batches}
        log.info("%s: inference %s", name, {b: round(v, 1) for b, v in infer.items()})
        rate, cpu = _training(stem, size, args.train_batch, args.train_steps)
        log.info("%s: training %.1f img/s, %.3f CPU-s/img", name, rate, cpu)
        accuracy = _accuracy(stem, size, args) if args.accuracy_data else None
        results.append(Figures(name, net.count_params(), infer, rate, cpu, accuracy))

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nResNet50 variants on this machine ({cores} cores, load average {load})")
    columns = [
        "variant",
        "params",
        *(f"infer b={b} img/s" for b in args.batches),
        f"train img/s (b={args.train_batch})",
        "CPU-s/img",
        "epoch (measured)",
        f"epoch (idle, {cores} cores)",
        f"{args.epochs} epochs (idle)",
        *(["short-run test acc"] if args.accuracy_data else []),
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for f in results:
        idle_rate = cores / f.train_cpu_s_per_img  # every core busy with this, none waiting
        epoch, idle_epoch = CIFAR10_TRAIN_IMAGES / f.train_img_s, CIFAR10_TRAIN_IMAGES / idle_rate
        cells = [f.name, f"{f.params / 1e6:.1f} M"]
        cells += [f"{f.infer[b]:.1f}" for b in args.batches]
        cells += [f"{f.train_img_s:.1f}", f"{f.train_cpu_s_per_img:.3f}", _hours(epoch)]
        cells += [_hours(idle_epoch), _hours(args.epochs * idle_epoch)]
        if args.accuracy_data:
            cells.append("-" if f.accuracy is None else f"{100 * f.accuracy:.1f}%")
        print("| " + " | ".join(cells) + " |")
    for f in results:
        idle_schedule = args.epochs * CIFAR10_TRAIN_IMAGES * f.train_cpu_s_per_img / cores
        verdict = "within" if idle_schedule <= BUDGET_HOURS * 3600 else "beyond"
        print(
            f"{f.name}: {args.epochs} epochs on an idle {cores}-core machine ~"
            f"{_hours(idle_schedule)}, {verdict} the {BUDGET_HOURS:g} h budget"
        )
    return 0
