"""Train the ResNet50 on a lent GPU with JAX (no TensorFlow there), finishing within a time budget.

    KERAS_BACKEND=jax python -m appliance.ml.gpu_train --data cifar10-jpg.tar.gz --out DIR \\
        --minutes 8 [--stem cifar] [--batch 512] [--epochs N]

The model is :func:`appliance.model.build`'s, trained in mixed bfloat16 (no loss scaling needed,
unlike float16). The recipe is ``appliance train``'s where it fits a run of minutes: SGD, momentum
0.9, Nesterov, decoupled weight decay 5e-4 not on BatchNorm or biases, label smoothing 0.1, peak
LR 0.1 per 128 images, random crop from a 4-px zero padding and horizontal flip (drawn on the
device), warm-up from peak/25 over 2 epochs. The decay differs: linear to zero at the planned last
step rather than cosine, because the last step is planned from the measured speed and re-planned
each epoch, and a linear decay re-anchors at the current rate without a jump.

The budget counts from the process's start: data decoding and XLA compilation included; the test
evaluation and the writing are reserved for at the end. The output (see :mod:`appliance.ml.pieces`)
is what ``appliance model import-weights`` turns into an artifact on a CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance import __version__, datasets, model
from appliance.ml import pieces
from appliance.ml.evaluate import EvaluationError, balanced_order, decode_samples, label_indices
from appliance.ml.recipe import augmentation_words, crop_pad
from appliance.ml.schedule import Schedule, duration, planned_steps
from appliance.ml.training_data import DATA_SHA256_METHOD, data_sha256

STARTED = time.monotonic()  # the budget counts from here (the imports above are cheap)
log = logging.getLogger("appliance.ml.gpu_train")
EVAL_BATCH = 500


class GpuTrainError(ValueError):
    """The run cannot start as asked; the message says why."""


@dataclass(frozen=True)
class Recipe:
    stem: str
    input_size: int
    batch_size: int
    peak_lr: float
    warmup_epochs: float
    momentum: float
    weight_decay: float
    label_smoothing: float
    seed: int

    @property
    def pad(self) -> int:
        return crop_pad(self.input_size)


def elapsed() -> float:
    return time.monotonic() - STARTED


# --- data -------------------------------------------------------------------------------------


def load_split(
    source: str, split: str, size: int, limit: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decoded uint8 images, label indices and names; ``limit``: a class-balanced subset."""
    samples = datasets.load(source, split)
    labels = label_indices(samples, model.CIFAR10_CLASSES)
    if limit:
        order = balanced_order(labels, seed)[:limit]
        samples, labels = [samples[i] for i in order], labels[order]
    log.info("decoding %d %s images (%.0fs)", len(samples), split, elapsed())
    return decode_samples(samples, size), labels, [s.name for s in samples]


# --- the JAX functions ------------------------------------------------------------------------


def make_functions(net, plain, optimizer, recipe: Recipe, classes: int):
    """The jitted training step (augment, forward, backward, SGD) and float32 prediction."""
    import jax
    import jax.numpy as jnp
    import keras

    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    lr_at = next(i for i, v in enumerate(optimizer.variables) if v.name == "learning_rate")
    base_key = jax.random.PRNGKey(recipe.seed)
    pad = recipe.pad

    def augment(images, key):
        """Per image: a crop from the zero-padded image at a random offset, and a random flip."""
        count, size = images.shape[0], images.shape[1]
        offsets = jax.random.randint(jax.random.fold_in(key, 0), (count, 2), 0, 2 * pad + 1)
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        crop = jax.vmap(
            lambda image, at: jax.lax.dynamic_slice(image, (at[0], at[1], 0), (size, size, 3))
        )(padded, offsets)
        flip = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, (count,))
        return jnp.where(flip[:, None, None, None], crop[:, :, ::-1], crop)

    def loss_and_state(trainable, non_trainable, x, y):
        probs, non_trainable = net.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, probs), (non_trainable, probs)

    grad = jax.value_and_grad(loss_and_state, has_aux=True)

    def train_step(state, all_images, all_labels, index, step, lr):
        trainable, non_trainable, opt_vars = state
        labels = all_labels[index]
        x = augment(all_images[index], jax.random.fold_in(base_key, step))
        y = jax.nn.one_hot(labels, classes)
        (loss, (non_trainable, probs)), grads = grad(trainable, non_trainable, x, y)
        opt_vars = list(opt_vars)
        opt_vars[lr_at] = lr.astype(opt_vars[lr_at].dtype)  # the schedule is kept in Python
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        correct = jnp.sum(jnp.argmax(probs, axis=-1) == labels)
        return (trainable, non_trainable, opt_vars), loss, correct

    def predict(trainable, non_trainable, x):
        return plain.stateless_call(trainable, non_trainable, x, training=False)[0]

    return jax.jit(train_step, donate_argnums=0), jax.jit(predict)


def predict_all(predict, plain, images: np.ndarray) -> np.ndarray:
    """Probabilities in fixed-size batches (the last one padded), so one compilation serves."""
    import jax

    variables = ([v.value for v in plain.trainable_variables],
                 [v.value for v in plain.non_trainable_variables])  # fmt: skip
    size = min(EVAL_BATCH, len(images))
    out = []
    for start in range(0, len(images), size):
        batch = images[start : start + size]
        padded = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), np.uint8)])
        out.append(np.asarray(jax.device_get(predict(*variables, padded)))[: len(batch)])
    return np.concatenate(out).astype(np.float32)


# --- the run ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data", required=True, help="a folder-layout .tar.gz (train/ and test/) or folder")
    add("--out", type=Path, required=True, help="folder for the weights, manifest, reference")
    add("--minutes", type=float, default=8.0, help="whole run, start to files written")
    add("--stem", choices=model.STEMS, default="cifar")
    add("--input-size", type=int, default=32)
    add("--batch", type=int, default=512)
    add("--epochs", type=int, help="at most this many epochs (default: as many as fit)")
    add("--steps", type=int, help="exactly this many steps, whatever the time (tests)")
    add("--lr", type=float, help="peak learning rate (default 0.1 x batch / 128)")
    add("--warmup-epochs", type=float, default=2.0)
    add("--weight-decay", type=float, default=5e-4)
    add("--label-smoothing", type=float, default=0.1)
    add("--seed", type=int, default=0)
    add("--limit-train", type=int, help="a class-balanced subset of N training images")
    add("--limit-test", type=int, help="a class-balanced subset of N test images")
    add("--reference", type=int, default=512, help="test images whose outputs are kept")


def check_backend() -> str:
    import keras

    if keras.backend.backend() != "jax":
        raise GpuTrainError(
            f"Keras runs on {keras.backend.backend()!r}: set KERAS_BACKEND=jax before starting"
        )
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")  # float32 means float32 (no TF32)
    device = jax.devices()[0]
    return f"{device.platform}: {getattr(device, 'device_kind', device)}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import keras

    device = check_backend()
    if args.batch < 1 or args.minutes <= 0:
        raise GpuTrainError("--batch and --minutes must be positive")
    deadline = args.minutes * 60
    recipe = Recipe(
        stem=args.stem, input_size=args.input_size, batch_size=args.batch,
        peak_lr=args.lr if args.lr is not None else 0.1 * args.batch / 128,
        warmup_epochs=args.warmup_epochs, momentum=0.9, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed,
    )  # fmt: skip
    log.info("keras %s on %s, jax %s; budget %s", keras.__version__, device, jax.__version__,
             duration(deadline))  # fmt: skip
    size = recipe.input_size
    train_x, train_y, _ = load_split(args.data, "train", size, args.limit_train, recipe.seed)
    test_x, test_y, test_names = load_split(args.data, "test", size, args.limit_test, recipe.seed)
    n = len(train_y)
    if n < recipe.batch_size:
        raise GpuTrainError(f"{n} training images, fewer than one batch of {recipe.batch_size}")
    per_epoch = n // recipe.batch_size  # whole batches: BatchNorm dislikes a tiny last one
    args.out.mkdir(parents=True, exist_ok=True)

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    net = model.build(size, model.CIFAR10_CLASSES, recipe.stem, recipe.seed)
    keras.mixed_precision.set_global_policy("float32")
    plain = model.build(size, model.CIFAR10_CLASSES, recipe.stem, recipe.seed)
    optimizer = keras.optimizers.SGD(
        learning_rate=recipe.peak_lr, momentum=recipe.momentum, nesterov=True,
        weight_decay=recipe.weight_decay,
    )  # fmt: skip
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    optimizer.build(net.trainable_variables)
    train_step, predict = make_functions(net, plain, optimizer, recipe, len(model.CIFAR10_CLASSES))

    state = ([v.value for v in net.trainable_variables],
             [v.value for v in net.non_trainable_variables],
             [v.value for v in optimizer.variables])  # fmt: skip
    all_x, all_y = jax.device_put(train_x), jax.device_put(train_y.astype(np.int32))
    planned = args.steps or (args.epochs * per_epoch if args.epochs else 10**9)
    schedule = Schedule(recipe.peak_lr, round(recipe.warmup_epochs * per_epoch), planned)
    if args.steps or args.epochs:
        schedule.replan(0, planned)

    orders: dict[int, np.ndarray] = {}

    def step_once(step: int):
        epoch, k = divmod(step, per_epoch)
        if epoch not in orders:  # each epoch's order as appliance.ml.training_data draws it
            orders.clear()
            orders[epoch] = np.random.default_rng([recipe.seed, epoch]).permutation(n)
        index = orders[epoch][k * recipe.batch_size : (k + 1) * recipe.batch_size]
        lr = np.float32(schedule(step))
        return train_step(state, all_x, all_y, index.astype(np.int32), np.int32(step), lr)

    # Compile both functions first (the first training step is a real one), then time steps.
    began = time.monotonic()
    state, loss, _ = step_once(0)
    jax.block_until_ready(loss)
    compile_train = time.monotonic() - began
    began = time.monotonic()
    predict_all(predict, plain, test_x[: min(EVAL_BATCH, len(test_x))])
    compile_eval = time.monotonic() - began
    log.info("compiled: training step %.1fs, prediction %.1fs (%.0fs in)", compile_train,
             compile_eval, elapsed())  # fmt: skip

    def reserve(rate: float) -> float:
        # The test set through the float32 model (taken as slow as a training image), writing.
        return len(test_x) / rate + 20.0

    step, losses, corrects = 1, [], []
    probe = 1 + min(10, max(planned - 1, 0))
    mark, mark_step, rate, trained_since = time.monotonic(), 1, 0.0, time.monotonic()
    last_log = time.monotonic()
    while step < schedule.total:
        if rate and elapsed() > deadline - reserve(rate):
            log.warning("out of time: stopping at step %d of %d", step, schedule.total)
            break
        state, loss, correct = step_once(step)
        losses.append(loss)
        corrects.append(correct)
        step += 1
        boundary = step == probe or step % per_epoch == 0 or step == schedule.total
        if not boundary and time.monotonic() - last_log < 30:
            continue
        jax.block_until_ready(loss)
        now = time.monotonic()
        rate = (step - mark_step) * recipe.batch_size / max(now - mark, 1e-9)
        # Plan, then re-plan each epoch, from the measured rate (a schedule at its end stays).
        if boundary and not args.steps and step < schedule.total:
            left = deadline - elapsed() - reserve(rate)
            total = planned_steps(step, rate, left, recipe.batch_size, per_epoch, args.epochs)
            if abs(total - schedule.total) > 0.02 * schedule.total:
                log.info(
                    "%s: %d steps (%.1f epochs) at %.0f img/s",
                    "planned" if schedule.total == 10**9 else "re-planned", total,
                    total / per_epoch, rate,
                )  # fmt: skip
                schedule.replan(step, total)
        seen = len(losses) * recipe.batch_size
        mean_loss = float(np.mean(jax.device_get(losses)))
        accuracy = float(np.sum(jax.device_get(corrects))) / seen
        left = (schedule.total - step) * recipe.batch_size / rate + reserve(rate)
        log.info(
            "epoch %.1f/%.1f step %d/%d  loss %.4f acc %.3f  lr %.4f  %.0f img/s  %s in, "
            "done in ~%s (at ~%s of %s)",
            step / per_epoch, schedule.total / per_epoch, step, schedule.total, mean_loss,
            accuracy, schedule(step), rate, duration(elapsed()), duration(left),
            duration(elapsed() + left), duration(deadline),
        )  # fmt: skip
        losses, corrects, mark, mark_step, last_log = [], [], now, step, now
    jax.block_until_ready(state)
    training_seconds = time.monotonic() - trained_since + compile_train

    # The float32 model with the weights as stored: exactly what the importer will rebuild.
    for variable, value in zip(net.trainable_variables, state[0], strict=True):
        variable.assign(value)
    for variable, value in zip(net.non_trainable_variables, state[1], strict=True):
        variable.assign(value)
    names = [w.path for w in net.weights]
    stored = pieces.to_storage(names, net.get_weights())
    plain.set_weights([w.astype(np.float32) for w in stored])
    probs = predict_all(predict, plain, test_x)
    accuracy = float(np.mean(probs.argmax(axis=1) == test_y))
    log.info(
        "test top-1 %.2f%% on %d images (float32, stored weights)", 100 * accuracy, len(test_y)
    )

    entries, files = pieces.write_pieces(args.out, names, stored)
    count = min(args.reference, len(test_x))
    reference = pieces.write_reference(
        args.out, test_x[:count], test_y[:count], test_names[:count], probs[:count]
    )
    manifest = {
        "keras_version": keras.__version__, "backend": "jax", "jax_version": jax.__version__,
        "device": device, "code_version": __version__, "stem": recipe.stem, "input_size": size,
        "class_names": list(model.CIFAR10_CLASSES), "test_accuracy": accuracy,
        "test_images": len(test_y), "train_images": n, "steps": step,
        "epochs": round(step / per_epoch, 3), "batch_size": recipe.batch_size,
        "training_seconds": round(training_seconds, 1),
        "compile_seconds": round(compile_train + compile_eval, 1),
        "images_per_second": round(rate, 1), "precision": "mixed_bfloat16, stored as float16",
        "training_data": Path(args.data).name, "training_data_sha256": data_sha256(args.data),
        "training_data_sha256_method": DATA_SHA256_METHOD, "recipe": asdict(recipe),
        "schedule": f"linear warm-up from peak/25 over {schedule.warmup} steps, then linear to 0",
        "augmentation": augmentation_words(recipe.input_size),
        "weights": [asdict(e) for e in entries], "pieces": files, "reference": reference,
    }  # fmt: skip
    manifest["total_seconds"] = round(elapsed(), 1)
    pieces.write_manifest(args.out, manifest)
    total_bytes = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    log.info(
        "wrote %s: %d pieces, %.1f MiB in all; %d steps (%.1f epochs), test top-1 %.2f%%, %s",
        args.out, len(files), total_bytes / 2**20, step, step / per_epoch, 100 * accuracy,
        duration(elapsed()),
    )  # fmt: skip
    return manifest


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(prog="python -m appliance.ml.gpu_train", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except (GpuTrainError, datasets.DatasetError, EvaluationError, pieces.WeightsError) as exc:
        print(f"gpu_train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
