"""``appliance variants``: accuracy against speed for the ResNet50 variants, measured here.

For each variant (stem x input size) it measures, on this machine:

- inference img/s at batch 1 and at a large batch (the model's direct call traced once, as the
  server runs it), for a few seconds each;
- training img/s (the training step ``appliance train`` compiles: same optimizer and loss) for
  each training setup: a precision (float32, or mixed bfloat16 through oneDNN) with or without
  XLA, and the CPU seconds each image costs, from which it projects an epoch of CIFAR-10 and the
  whole schedule, both as measured and on an otherwise idle machine (all cores ours);
- which convolution kernels each setup really runs, and in which dtype (``training_step``):
  XLA on a CPU may turn bfloat16 convolutions back into float32;
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
class Training:
    setup: str  # e.g. "bfloat16+xla"
    img_s: float
    cpu_s_per_img: float
    kernels: str


@dataclass
class Figures:
    name: str
    params: int
    infer: dict[int, float]  # batch -> img/s
    training: list[Training]
    accuracy: float | None = None


def parse_setup(text: str) -> tuple[str, bool]:
    precision, _, xla = text.partition("+")
    if precision not in ("float32", "bfloat16") or xla not in ("", "xla"):
        raise argparse.ArgumentTypeError(
            f"expected float32 or bfloat16, optionally +xla (e.g. bfloat16+xla): {text}"
        )
    return precision, xla == "xla"


def setup_name(precision: str, xla: bool) -> str:
    return f"{precision}+xla" if xla else precision


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
        default=[("cifar", 32), ("stock", 64), ("pooled", 32)],
        metavar="STEM:SIZE",
        help="default: cifar:32 stock:64 pooled:32 (32x32, 16x16, 16x16 into the first stage)",
    )
    add(
        "--setups",
        type=parse_setup,
        nargs="+",
        default=[("float32", True), ("float32", False), ("bfloat16", False), ("bfloat16", True)],
        metavar="PRECISION[+xla]",
        help="training setups timed: default float32+xla float32 bfloat16 bfloat16+xla",
    )
    add("--batches", type=int, nargs="+", default=[1, 256], help="inference batch sizes")
    add("--seconds", type=float, default=3.0, help="measured seconds per inference figure")
    add("--train-batch", type=int, default=128, help="training batch size measured")
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


def _accuracy(stem: str, size: int, args: argparse.Namespace) -> float | None:
    import tempfile

    from appliance.ml import train

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

    from appliance.ml import compiled, training_step

    cores = os.cpu_count() or 1
    results: list[Figures] = []
    for stem, size in args.variants:
        name = f"{stem} stem, {size}x{size}"
        keras.mixed_precision.set_global_policy("float32")
        net = model.build(size, stem=stem)
        infer = {b: _inference(net, size, b, args.seconds) for b in args.batches}
        log.info("%s: inference %s", name, {b: round(v, 1) for b, v in infer.items()})
        timings = []
        for precision, xla in args.setups:
            setup = setup_name(precision, xla)
            policy = compiled.POLICIES[precision]
            step = training_step.measure(
                stem, size, policy, xla, args.train_batch, args.train_steps
            )
            log.info("%s, %s: training %.1f img/s, %.3f CPU-s/img, %s", name, setup, step.img_s,
                     step.cpu_s_per_img, step.kernels)  # fmt: skip
            timings.append(Training(setup, step.img_s, step.cpu_s_per_img, step.kernels))
        accuracy = _accuracy(stem, size, args) if args.accuracy_data else None
        results.append(Figures(name, net.count_params(), infer, timings, accuracy))
    _print_table(results, args, cores)
    return 0


def _print_table(results: list[Figures], args: argparse.Namespace, cores: int) -> None:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nResNet50 variants on this machine ({cores} cores, load average {load})")
    columns = [
        "variant",
        "params",
        *(f"infer b={b} img/s" for b in args.batches),
        "training setup",
        f"train img/s (b={args.train_batch})",
        "CPU-s/img",
        "epoch (measured)",
        f"epoch (idle, {cores} cores)",
        f"{args.epochs} epochs (idle)",
        "convolutions run",
        *(["short-run test acc"] if args.accuracy_data else []),
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    best: tuple[float, str] | None = None
    for f in results:
        for t in f.training:
            idle_rate = cores / t.cpu_s_per_img  # every core busy with this, none waiting
            epoch, idle_epoch = CIFAR10_TRAIN_IMAGES / t.img_s, CIFAR10_TRAIN_IMAGES / idle_rate
            cells = [f.name, f"{f.params / 1e6:.1f} M"]
            cells += [f"{f.infer[b]:.1f}" for b in args.batches]
            cells += [t.setup, f"{t.img_s:.1f}", f"{t.cpu_s_per_img:.3f}", _hours(epoch)]
            cells += [_hours(idle_epoch), _hours(args.epochs * idle_epoch)]
            cells.append(t.kernels)
            if args.accuracy_data:
                cells.append("-" if f.accuracy is None else f"{100 * f.accuracy:.1f}%")
            print("| " + " | ".join(cells) + " |")
            if best is None or idle_epoch < best[0]:
                best = (idle_epoch, f"{f.name}, {t.setup}")
    if best is not None:
        schedule = args.epochs * best[0]
        verdict = "within" if schedule <= BUDGET_HOURS * 3600 else "beyond"
        print(
            f"fastest: {best[1]}: {args.epochs} epochs on an idle {cores}-core machine ~"
            f"{_hours(schedule)}, {verdict} one {BUDGET_HOURS:g} h session"
        )
