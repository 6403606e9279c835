"""`appliance train`: the ResNet50 on CIFAR-10, reproducible and resumable.

- Data: the training split of any source :func:`appliance.datasets.load` accepts, decoded once by
  the serving path's :func:`appliance.imaging.image_to_input` (normalisation is inside the model).
- Pipeline: tf.data; each epoch's order and augmentation (random crop from a 4-px zero padding,
  horizontal flip) are a pure function of ``--seed`` and the epoch number, so an interrupted run
  that resumes sees the very batches the uninterrupted one would have.
- Recipe: SGD, momentum 0.9, Nesterov, decoupled weight decay 5e-4 (not on BatchNorm or biases),
  label smoothing 0.1, linear warmup then cosine decay to zero, peak LR 0.1 per 128 images.
- Precision: mixed float16 on a GPU, float32 on a CPU (float16 is slower there), or mixed
  bfloat16 by choice (oneDNN runs it on CPUs with AVX512_BF16 or AMX); the artifact is always
  float32 so it serves anywhere.
- Resume: after every epoch the model and optimizer state go to ``X.ckpt/`` beside ``--out``;
  running the same command again continues from the last completed epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from appliance import datasets, model
from appliance.evaluate import (
    EvaluationError,
    balanced_order,
    decode_samples,
    evaluate,
    label_indices,
)

log = logging.getLogger(__name__)

DEFAULT_OUT = "build/model/resnet50.keras"
DEFAULT_STEM = "cifar"  # see add_arguments: the stem that can reach 90% at 32x32
CHECKPOINT_SUFFIX = ".ckpt"
STATE_FILE = "state.json"
DATA_SHA256_METHOD = (
    "a file (the .tar.gz): sha256 of its bytes; a folder: sha256 of the manifest listing, for "
    "every file below it sorted by relative POSIX path, the line '<sha256 of the file>  <path>' "
    "(the output of `find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum` run inside "
    "it); cifar10: sha256 of the official cifar-10-python.tar.gz that was downloaded"
)


class TrainingError(ValueError):
    """The run cannot start or continue as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights; a checkpoint resumes only the same recipe."""

    stem: str
    input_size: int
    epochs: int
    batch_size: int
    peak_lr: float
    warmup_epochs: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    seed: int
    limit: int | None
    val_split: float
    data_sha256: str

    @property
    def pad(self) -> int:
        """The random-crop padding: 4 px at 32x32, scaled with the input size."""
        return max(1, round(4 * self.input_size / 32))


# --- data -------------------------------------------------------------------------------------


def data_sha256(source: str) -> str:
    """The training data's identity, as described by :data:`DATA_SHA256_METHOD`."""
    if source == "cifar10":
        path = datasets.cache_dir() / Path(datasets.CIFAR10_URL).name
    else:
        path = Path(source)
    if path.is_file():
        return model.sha256_file(path)
    if not path.is_dir():
        raise TrainingError(f"{source}: no such file or folder to hash")
    manifest = hashlib.sha256()
    files = sorted(
        (p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()
    )
    for file in files:
        manifest.update(
            f"{model.sha256_file(file)}  {file.relative_to(path).as_posix()}\n".encode()
        )
    return manifest.hexdigest()


@dataclass
class Split:
    images: np.ndarray  # N x S x S x 3 uint8, exactly what the server would feed the model
    labels: np.ndarray  # N int64 class indices


def load_training_data(source: str, recipe: Recipe) -> tuple[Split, Split | None, set[str]]:
    """The (limited) training split, decoded, the validation part held out of it, and the names
    of all training samples (to tell whether the source's test split is really separate)."""
    samples = datasets.load(source, "train")
    labels = label_indices(samples, model.CIFAR10_CLASSES)
    # Balanced order: --limit and --val-split take every class alike from class-sorted sources.
    order = balanced_order(labels, recipe.seed)[: recipe.limit]
    n_val = round(len(order) * recipe.val_split)
    chosen = [samples[i] for i in order]
    log.info("decoding %d training images at %dx%d", len(chosen), *(recipe.input_size,) * 2)
    images = decode_samples(chosen, recipe.input_size)
    val = Split(images[:n_val], labels[order[:n_val]]) if n_val else None
    return Split(images[n_val:], labels[order[n_val:]]), val, {s.name for s in samples}


def augment_batch(images, seed, pad: int):
    """Random crop from a zero padding of ``pad`` px and a random horizontal flip, per image.

    Stateless: the same ``seed`` (2 integers) gives the same crops and flips, on any machine.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    batch, size = tf.shape(images)[0], images.shape[1]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    offsets = [
        tf.random.stateless_uniform([batch], seeds[i], 0, 2 * pad + 1, dtype=tf.int32)
        for i in (0, 1)
    ]
    # Gather rows then columns with per-image offsets: an exact integer crop, no resampling.
    rows = offsets[0][:, None] + tf.range(size)[None, :]
    cols = offsets[1][:, None] + tf.range(size)[None, :]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
    flip = tf.random.stateless_uniform([batch], seeds[2]) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)


def epoch_batches(
    split: Split, recipe: Recipe, steps: int, start_epoch: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images, labels, augmentation seed) for every step of epochs start_epoch..epochs-1."""
    for epoch in range(start_epoch, recipe.epochs):
        order = np.random.default_rng([recipe.seed, epoch]).permutation(len(split.labels))
        for step in range(steps):
            index = np.sort(order[step * recipe.batch_size : (step + 1) * recipe.batch_size])
            seed = np.array([recipe.seed, epoch * steps + step], dtype=np.int64)
            yield split.images[index], split.labels[index], seed


def training_dataset(split: Split, recipe: Recipe, steps: int, start_epoch: int, classes: int):
    """tf.data: batches from :func:`epoch_batches`, augmented in parallel, prefetched."""
    import tensorflow as tf

    size = recipe.input_size
    signature = (
        tf.TensorSpec([None, size, size, 3], tf.uint8),
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([2], tf.int64),
    )

    def prepare(images, labels, seed):
        return augment_batch(images, seed, recipe.pad), tf.one_hot(labels, classes)

    dataset = tf.data.Dataset.from_generator(
        lambda: epoch_batches(split, recipe, steps, start_epoch), output_signature=signature
    )
    # deterministic=True keeps the batch order even with parallel augmentation.
    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def validation_dataset(split: Split, batch_size: int, classes: int):
    import tensorflow as tf

    one_hot = np.eye(classes, dtype=np.float32)[split.labels]
    return tf.data.Dataset.from_tensor_slices((split.images, one_hot)).batch(batch_size)


# --- model and optimizer ------------------------------------------------------------------------


def has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def lr_schedule(recipe: Recipe, steps_per_epoch: int):
    """Linear warmup from peak/25 to the peak, then cosine decay to zero at the last step."""
    import keras

    total = recipe.epochs * steps_per_epoch
    warmup = min(round(recipe.warmup_epochs * steps_per_epoch), max(total - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=recipe.peak_lr / 25,
        decay_steps=max(total - warmup, 1),
        alpha=0.0,
        warmup_target=recipe.peak_lr,
        warmup_steps=warmup,
    )


def compile_model(net, recipe: Recipe, steps_per_epoch: int, xla: bool = True) -> None:
    """SGD + Nesterov + weight decay + label smoothing, as the ResNet-on-CIFAR recipes do."""
    import keras

    optimizer = keras.optimizers.SGD(
        learning_rate=lr_schedule(recipe, steps_per_epoch),
        momentum=recipe.momentum,
        nesterov=True,
        weight_decay=recipe.weight_decay,
    )
    # Decaying BatchNorm scales/offsets and biases only fights the normalisation; the usual
    # recipes leave them out. (Not serialised by Keras: resume therefore recompiles, see run().)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    net.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        # XLA on a CPU too: TensorFlow's own CPU kernel for Conv2DBackpropInput is very slow on
        # the 1x1 and 2x2 feature maps of the stock stem at 32x32 (conv5 took 90% of a step); XLA's
        # step ran 2.8x faster there (43 against 15 img/s on 2 cores) and as fast on the CIFAR stem.
        jit_compile=xla,
    )


# --precision -> the Keras dtype policy ("auto" is decided by has_gpu()).
POLICIES = {"mixed": "mixed_float16", "bfloat16": "mixed_bfloat16", "float32": "float32"}


def precision_policy(precision: str) -> str:
    if precision == "auto":
        return "mixed_float16" if has_gpu() else "float32"
    return POLICIES[precision]


def build_compiled(recipe: Recipe, steps_per_epoch: int, policy: str, xla: bool = True):
    import keras

    keras.mixed_precision.set_global_policy(policy)
    net = model.build(recipe.input_size, model.CIFAR10_CLASSES, recipe.stem, recipe.seed)
    compile_model(net, recipe, steps_per_epoch, xla)
    return net


def export_copy(net, recipe: Recipe):
    """The same weights in a fresh float32, uncompiled model: what gets saved, so the artifact
    serves on CPUs and carries no optimizer state (half the size of a checkpoint)."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    plain = model.build(recipe.input_size, model.CIFAR10_CLASSES, recipe.stem, recipe.seed)
    plain.set_weights(net.get_weights())
    return plain


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_dir(out: Path) -> Path:
    """``build/model/resnet50.keras`` -> ``build/model/resnet50.ckpt/``."""
    return out.with_name(model.artifact_paths(out)[0].stem + CHECKPOINT_SUFFIX)


def read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: not JSON ({exc}); pass --fresh to start over") from None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, folder / STATE_FILE)  # atomic: a crash leaves the old state or the new


def save_checkpoint(net, folder: Path, state: dict[str, Any]) -> None:
    """Model + optimizer state to a new file, then the state naming it, then drop the old file.

    A kill at any point leaves a state.json that names a complete checkpoint file.
    """
    name = f"epoch-{state['epoch']:04d}.keras"
    tmp = folder / f"tmp-{name}"
    net.save(tmp)  # .keras includes the optimizer's variables (momentum, iterations)
    os.replace(tmp, folder / name)
    previous = (read_state(folder) or {}).get("checkpoint")
    write_state(folder, {**state, "checkpoint": name})
    if previous and previous != name:
        (folder / previous).unlink(missing_ok=True)


def _make_callbacks(recipe: Recipe, steps: int, folder: Path, state: dict[str, Any]):
    import keras

    class EpochEnd(keras.callbacks.Callback):
        """A per-step bar, one log line per epoch, and a checkpoint after every epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.epoch_times: list[float] = []
            self.bar: tqdm | None = None

        def on_epoch_begin(self, epoch: int, logs=None) -> None:
            self.started = self.train_done = time.monotonic()
            self.bar = tqdm(
                total=steps,
                desc=f"epoch {epoch + 1}/{recipe.epochs}",
                unit="step",
                leave=False,
                mininterval=1.0 if sys.stderr.isatty() else 30.0,
            )

        def on_train_batch_end(self, batch: int, logs=None) -> None:
            self.train_done = time.monotonic()
            if self.bar is not None:
                self.bar.update(1)
                logs = logs or {}
                self.bar.set_postfix(
                    loss=f"{logs.get('loss', 0):.3f}", acc=f"{logs.get('accuracy', 0):.3f}"
                )

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            if self.bar is not None:
                self.bar.close()
            logs = {k: float(v) for k, v in (logs or {}).items()}
            seconds = time.monotonic() - self.started
            self.epoch_times.append(seconds)
            rate = steps * recipe.batch_size / max(self.train_done - self.started, 1e-9)
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            left = (recipe.epochs - epoch - 1) * float(np.mean(self.epoch_times))
            record = {"epoch": epoch + 1, **logs, "lr": lr, "seconds": seconds, "img_per_s": rate}
            val = ""
            if "val_accuracy" in logs:
                val = f"  val_loss {logs['val_loss']:.4f}  val_acc {logs['val_accuracy']:.4f}"
            log.info(
                "epoch %d/%d  loss %.4f  acc %.4f%s  lr %.4g  %.1f img/s  %s  ~%s left",
                epoch + 1,
                recipe.epochs,
                logs.get("loss", math.nan),
                logs.get("accuracy", math.nan),
                val,
                lr,
                rate,
                _duration(seconds),
                _duration(left),
            )
            state["epoch"] = epoch + 1
            state["history"].append(record)
            state["training_seconds"] += seconds
            save_checkpoint(self.model, folder, state)

    return [EpochEnd()]


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data", default="cifar10", help="cifar10 (official download), a folder or its .tar.gz")
    add("--out", type=Path, default=Path(DEFAULT_OUT), help="artifact (default %(default)s)")
    add("--epochs", type=int, default=30, help="total epochs (default %(default)s)")
    add("--batch-size", type=int, default=128)
    add(
        "--stem",
        choices=model.STEMS,
        default=DEFAULT_STEM,
        help="cifar (default): 3x3 stride-1 first conv, no max-pool, keeps the 32x32 detail (the "
        "variant that can reach 90%%+); stock: the ImageNet 7x7/2 conv + max-pool, which shrinks "
        "32x32 to 8x8 first: ~40x faster inference and ~3x cheaper training on a CPU, far less "
        "accurate",
    )
    add("--input-size", type=int, default=32)
    add("--lr", type=float, help="peak learning rate (default 0.1 x batch-size / 128)")
    add("--warmup-epochs", type=float, default=2.0)
    add("--weight-decay", type=float, default=5e-4)
    add("--label-smoothing", type=float, default=0.1)
    add("--seed", type=int, default=0, help="weights init, data order and augmentation")
    add("--limit", type=int, help="train on a class-balanced subset of N images (quick runs)")
    add("--val-split", type=float, default=0.0, help="fraction held out, evaluated every epoch")
    add("--test-limit", type=int, help="evaluate on a class-balanced subset of N test images")
    add(
        "--precision",
        choices=("auto", *POLICIES),
        default="auto",
        help="auto: mixed float16 on a GPU, float32 on a CPU; bfloat16: mixed bfloat16 (CPUs "
        "with AVX512_BF16/AMX, GPUs)",
    )
    add(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile the training step with XLA (default; --no-xla: TensorFlow's own kernels)",
    )
    add("--fresh", action="store_true", help="discard a checkpoint and start over")


def recipe_from_args(args: argparse.Namespace, data_digest: str) -> Recipe:
    if args.epochs < 1 or args.batch_size < 1:
        raise TrainingError("--epochs and --batch-size must be at least 1")
    if not 0.0 <= args.val_split < 1.0:
        raise TrainingError("--val-split must be in [0, 1)")
    return Recipe(
        stem=args.stem,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        peak_lr=args.lr if args.lr is not None else 0.1 * args.batch_size / 128,
        warmup_epochs=args.warmup_epochs,
        momentum=0.9,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        limit=args.limit,
        val_split=args.val_split,
        data_sha256=data_digest,
    )


def run(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except (TrainingError, datasets.DatasetError, EvaluationError) as exc:
        print(f"appliance train: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    out = model.artifact_paths(args.out)[0]
    folder = checkpoint_dir(out)
    if args.fresh and folder.exists():
        shutil.rmtree(folder)
    if args.data == "cifar10":  # download (or find) the archive before hashing it
        datasets.download(
            datasets.CIFAR10_URL,
            datasets.cache_dir() / Path(datasets.CIFAR10_URL).name,
            datasets.CIFAR10_MD5,
        )
    recipe = recipe_from_args(args, data_sha256(args.data))
    state = read_state(folder)
    if state is not None and state.get("recipe") != asdict(recipe):
        changed = sorted(k for k, v in asdict(recipe).items() if state["recipe"].get(k) != v)
        raise TrainingError(
            f"{folder} holds a run with other settings ({', '.join(changed)} differ): rerun "
            "with the same options to resume, or pass --fresh to start over"
        )
    if state and state.get("finished") and out.exists():
        log.info("%s is already trained (%d epochs); --fresh trains again", out, state["epoch"])
        return 0

    policy = precision_policy(args.precision)
    log.info("precision: %s%s", policy, " (auto)" if args.precision == "auto" else "")
    train_split, val_split, train_names = load_training_data(args.data, recipe)
    n = len(train_split.labels)
    if n < recipe.batch_size:
        raise TrainingError(f"{n} training images, fewer than one batch of {recipe.batch_size}")
    steps = n // recipe.batch_size  # whole batches: BatchNorm dislikes a tiny last one
    net = build_compiled(recipe, steps, policy, args.xla)
    start = 0
    if state and state.get("checkpoint"):
        # Rebuild + compile + load weights rather than load_model: the compiled optimizer keeps
        # settings Keras does not serialise (the weight-decay exclusions).
        net.optimizer.build(net.trainable_variables)
        net.load_weights(folder / state["checkpoint"])
        start = int(state["epoch"])
        done = int(net.optimizer.iterations.numpy())
        # float16 loss scaling skips the update of a step whose gradients overflowed, so there
        # the count may fall short; otherwise it must be exact.
        if done > start * steps or (done < start * steps and policy != "mixed_float16"):
            raise TrainingError(
                f"{folder}: checkpoint has {done} optimizer steps, expected {start * steps}; "
                "pass --fresh to start over"
            )
        log.info("resuming from %s after epoch %d/%d", folder, start, recipe.epochs)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        state = {"recipe": asdict(recipe), "epoch": 0, "history": [], "training_seconds": 0.0}
        write_state(folder, state)
    log.info(
        "training ResNet50 (%s stem, %dx%d) on %d images of %s: %d epochs x %d steps of %d",
        recipe.stem, recipe.input_size, recipe.input_size, n, args.data, recipe.epochs, steps,
        recipe.batch_size,
    )  # fmt: skip
    if start < recipe.epochs:
        classes = len(model.CIFAR10_CLASSES)
        net.fit(
            training_dataset(train_split, recipe, steps, start, classes),
            epochs=recipe.epochs,
            initial_epoch=start,
            steps_per_epoch=steps,
            validation_data=validation_dataset(val_split, 256, classes) if val_split else None,
            callbacks=_make_callbacks(recipe, steps, folder, state),
            shuffle=False,  # the order is the dataset's own (seeded, per epoch)
            verbose=0,
        )
    metadata = _export(export_copy(net, recipe), recipe, args, state, out, policy, train_names)
    state["finished"] = True
    write_state(folder, state)
    accuracy = "n/a" if metadata.test_accuracy is None else f"{100 * metadata.test_accuracy:.2f}%"
    print(f"saved {out} ({metadata.model_id}), test accuracy {accuracy}")
    return 0


def _export(
    net,
    recipe: Recipe,
    args: argparse.Namespace,
    state: dict[str, Any],
    out: Path,
    policy: str,
    train_names: set[str],
) -> model.Metadata:
    """Evaluate on the test split (when the source has one) and save the artifact."""
    report = None
    try:
        test = datasets.load(args.data, "test")
    except datasets.DatasetError as exc:
        log.warning("no test split (%s): test accuracy not measured", exc)
        test = []
    if any(s.name in train_names for s in test):
        # A folder of class folders without train/ and test/ serves the same images to both.
        log.warning("%s has no separate test split: test accuracy not measured", args.data)
    elif test:
        if args.test_limit:
            truth = label_indices(test, model.CIFAR10_CLASSES)
            test = [test[i] for i in balanced_order(truth, recipe.seed)[: args.test_limit]]
        log.info("evaluating on %d test images", len(test))
        report = evaluate(net, test, model.CIFAR10_CLASSES, recipe.input_size)
        log.info("test top-1 %.2f%% (%d/%d)", 100 * report.top1, report.correct, report.total)
    metadata = model.Metadata(
        class_names=list(model.CIFAR10_CLASSES),
        input_size=recipe.input_size,
        stem=recipe.stem,
        test_accuracy=report.top1 if report else None,
        training_data_sha256=recipe.data_sha256,
        extra={
            "trained": True,
            "training_data": args.data,
            "training_data_sha256_method": DATA_SHA256_METHOD,
            "epochs": state["epoch"],
            "training_seconds": round(state["training_seconds"], 1),
            "train_images": recipe.limit or "all",
            "test_images": report.total if report else 0,
            "precision": policy if policy == "float32" else f"{policy} (saved as float32)",
            "optimizer": (
                f"SGD momentum {recipe.momentum} nesterov, weight decay {recipe.weight_decay} "
                f"(not BatchNorm/bias), peak lr {recipe.peak_lr:g}, linear warmup "
                f"{recipe.warmup_epochs:g} epochs then cosine to 0"
            ),
            "augmentation": f"random crop from {recipe.pad}-px zero padding, horizontal flip",
            "recipe": asdict(recipe),
            "history": state["history"],
        },
    )
    return model.save(net, out, metadata)
