"""The training data: its identity, its decoded splits, and the seeded batches of every epoch.

- Data: the training split of any source :func:`appliance.datasets.load` accepts, decoded once by
  the serving path's :func:`appliance.imaging.image_to_input` (normalisation is inside the model).
- Batches: each epoch's order and augmentation (random crop from a zero padding, horizontal flip)
  are a pure function of the seed, the epoch and the step, so a run resumed at any step sees the
  very batches the uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance import datasets, model
from appliance.ml.evaluate import balanced_order, decode_samples, label_indices
from appliance.ml.recipe import Recipe, TrainingError

log = logging.getLogger(__name__)

DATA_SHA256_METHOD = (
    "a file (the .tar.gz): sha256 of its bytes; a folder: sha256 of the manifest listing, for "
    "every file below it sorted by relative POSIX path, the line '<sha256 of the file>  <path>' "
    "(the output of `find . -type f | sed 's|^./||' | LC_ALL=C sort | xargs sha256sum` run inside "
    "it); cifar10: sha256 of the official cifar-10-python.tar.gz that was downloaded"
)


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


def augment_batch(images, seed, pad: int, cutout: int = 0):
    """Random crop from a zero padding of ``pad`` px and a random horizontal flip, per image; with
    ``cutout``, then a square of that side zeroed at a random centre (clipped at the edges).

    Stateless: the same ``seed`` (2 integers) gives the same crops, flips and squares, on any
    machine.
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
    out = tf.where(flip[:, None, None, None], tf.reverse(cropped, axis=[2]), cropped)
    return _cut_out(out, seed, cutout) if cutout else out


def _cut_out(images, seed, side: int):
    """Each image with a side x side square zeroed around a uniform random centre (Cutout).

    Its seeds are folded from ``seed`` apart from the crop's, so a run without cutout keeps the
    crops and flips it always had.
    """
    import tensorflow as tf

    own = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 1)
    seeds = tf.random.experimental.stateless_split(own, num=2)
    batch, size = tf.shape(images)[0], images.shape[1]
    start = [
        tf.random.stateless_uniform([batch], seeds[i], 0, size, dtype=tf.int32) - side // 2
        for i in (0, 1)
    ]
    span = tf.range(size)[None, :]
    inside_rows = (span >= start[0][:, None]) & (span < start[0][:, None] + side)
    inside_cols = (span >= start[1][:, None]) & (span < start[1][:, None] + side)
    square = inside_rows[:, :, None] & inside_cols[:, None, :]
    return tf.where(square[..., None], tf.zeros_like(images), images)


def epoch_batches(
    split: Split,
    recipe: Recipe,
    steps: int,
    start_epoch: int,
    start_step: int = 0,
    end_epoch: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(images, labels, augmentation seed) for every step from (start_epoch, start_step) to the
    end of epoch end_epoch - 1 (default: the last)."""  # fmt: skip
    for epoch in range(start_epoch, recipe.epochs if end_epoch is None else end_epoch):
        order = np.random.default_rng([recipe.seed, epoch]).permutation(len(split.labels))
        for step in range(start_step if epoch == start_epoch else 0, steps):
            index = np.sort(order[step * recipe.batch_size : (step + 1) * recipe.batch_size])
            seed = np.array([recipe.seed, epoch * steps + step], dtype=np.int64)
            yield split.images[index], split.labels[index], seed


def training_dataset(
    split: Split, recipe: Recipe, steps: int, start_epoch: int, classes: int, start_step: int = 0,
    end_epoch: int | None = None,
):  # fmt: skip
    """tf.data: batches from :func:`epoch_batches`, augmented in parallel, prefetched."""
    import tensorflow as tf

    size = recipe.input_size
    signature = (
        tf.TensorSpec([None, size, size, 3], tf.uint8),
        tf.TensorSpec([None], tf.int64),
        tf.TensorSpec([2], tf.int64),
    )

    def prepare(images, labels, seed):
        return augment_batch(images, seed, recipe.pad, recipe.cutout), tf.one_hot(labels, classes)

    dataset = tf.data.Dataset.from_generator(
        lambda: epoch_batches(split, recipe, steps, start_epoch, start_step, end_epoch),
        output_signature=signature,
    )
    # deterministic=True keeps the batch order even with parallel augmentation.
    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def validation_dataset(split: Split, batch_size: int, classes: int):
    import tensorflow as tf

    one_hot = np.eye(classes, dtype=np.float32)[split.labels]
    return tf.data.Dataset.from_tensor_slices((split.images, one_hot)).batch(batch_size)
