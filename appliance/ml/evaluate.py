"""`appliance evaluate MODEL DATA`: top-1 and per-class accuracy, and the confusion matrix as a PNG.

The helpers here (decode a labelled set, balanced subsets, batched prediction, the report) are also
what ``appliance train`` uses for its validation split and its final test-split evaluation, so a
model's recorded ``test_accuracy`` and this command's figure come from the same code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from appliance import datasets, model
from appliance.config import Settings
from appliance.imaging import ImageError, image_to_input

log = logging.getLogger(__name__)

# The serving path's limit; CIFAR images are far below it, but the call is the same one.
MAX_PIXELS = Settings().max_image_pixels


class EvaluationError(ValueError):
    """The labelled set does not fit the model (unknown class, undecodable image, empty)."""


def decode_samples(samples: Sequence[datasets.Sample], size: int) -> np.ndarray:
    """Encoded images -> N x size x size x 3 uint8, through the serving path's decoder."""
    out = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for i, sample in enumerate(tqdm(samples, desc="decode", unit="img", leave=False, delay=2)):
        try:
            out[i] = image_to_input(sample.image, size, MAX_PIXELS)
        except ImageError as exc:
            raise EvaluationError(f"{sample.name}: {exc}") from None
    return out


def label_indices(samples: Sequence[datasets.Sample], class_names: Sequence[str]) -> np.ndarray:
    """Class names -> indices in the model's class order; a class the model lacks is an error."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({s.label for s in samples} - index.keys())
    if unknown:
        raise EvaluationError(f"labels {unknown} are not among the model's classes {class_names}")
    return np.array([index[s.label] for s in samples], dtype=np.int64)


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation in which the classes take turns, so any prefix is class-balanced.

    The sources list images class by class; a plain prefix (``--limit``) would be one class.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for position in order:
        label = int(labels[position])
        rank[position] = seen.get(label, 0)
        seen[label] = rank[position] + 1
    # Sort by rank within the class first, then by place in the permutation.
    return order[np.lexsort((np.arange(len(order)), rank[order]))]


def predict(
    keras_model, images: np.ndarray, batch_size: int = 256, mirror: bool = False
) -> np.ndarray:
    """Class probabilities for uint8 images, through one traced direct call (as the server does).
    ``mirror``: each image's averaged with its left-right mirror's (test-time augmentation with
    the flip training used, at twice the arithmetic)."""
    import tensorflow as tf

    spec = tf.TensorSpec([None, *images.shape[1:]], tf.uint8)
    call = tf.function(lambda x: keras_model(x, training=False), input_signature=[spec])

    def probabilities(batch: np.ndarray) -> np.ndarray:
        direct = call(batch).numpy()
        return (direct + call(batch[:, :, ::-1, :]).numpy()) / 2 if mirror else direct

    batches = range(0, len(images), batch_size)
    parts = [
        probabilities(images[i : i + batch_size])
        for i in tqdm(batches, desc="predict", unit="batch", leave=False, delay=2)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, keras_model.output_shape[-1]))


@dataclass(frozen=True)
class Report:
    class_names: tuple[str, ...]
    confusion: np.ndarray  # [true, predicted] counts

    @classmethod
    def from_labels(
        cls, truth: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]
    ) -> Report:
        k = len(class_names)
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (truth, predicted), 1)
        return cls(tuple(class_names), confusion)

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def top1(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def per_class(self) -> list[tuple[str, int, int]]:
        """(class, correct, total) per class."""
        return [
            (name, int(self.confusion[i, i]), int(self.confusion[i].sum()))
            for i, name in enumerate(self.class_names)
        ]

    def format(self) -> str:
        lines = [f"top-1 accuracy: {100 * self.top1:.2f}% ({self.correct}/{self.total})"]
        lines.append(f"{'class':<12} {'accuracy':>9}  correct/total")
        for name, correct, total in self.per_class():
            accuracy = f"{100 * correct / total:.2f}%" if total else "-"
            lines.append(f"{name:<12} {accuracy:>9}  {correct}/{total}")
        return "\n".join(lines)


def plot_confusion(report: Report, path: Path, title: str) -> Path:
    """Write the confusion matrix (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    k = len(report.class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * k, 1.0 + 0.7 * k), dpi=100)
    ax.imshow(report.confusion, cmap="Blues")
    ax.set_xticks(range(k), report.class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), report.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\ntop-1 {100 * report.top1:.2f}% of {report.total}", fontsize=9)
    high = report.confusion.max() / 2 if report.total else 0
    for (i, j), count in np.ndenumerate(report.confusion):
        color = "white" if count > high else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate(
    keras_model,
    samples: Sequence[datasets.Sample],
    class_names: Sequence[str],
    input_size: int,
    batch_size: int = 256,
    mirror: bool = False,
) -> Report:
    """Decode, predict and count: the whole evaluation of a labelled set."""
    if not samples:
        raise EvaluationError("no images to evaluate")
    truth = label_indices(samples, class_names)
    images = decode_samples(samples, input_size)
    probs = predict(keras_model, images, batch_size, mirror)
    return Report.from_labels(truth, probs.argmax(axis=1), class_names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("model", help="model artifact, e.g. build/model/resnet50.keras (X.json beside it)")
    add("data", help="labelled images: cifar10, a folder of class folders, or its .tar.gz")
    add("--split", choices=datasets.SPLITS, default="test", help="which split (default test)")
    add(
        "--out",
        type=Path,
        help="confusion matrix PNG (default: build/evaluate/<model id>-<split>[-mirror]"
        ".confusion.png)",
    )
    add("--limit", type=int, help="evaluate a class-balanced subset of N images (quick checks)")
    add("--batch-size", type=int, default=256)
    add("--seed", type=int, default=0, help="which subset --limit takes")
    add(
        "--mirror",
        action="store_true",
        help="average each image's probabilities with its mirror's (what test-time flipping "
        "would give; twice the arithmetic; the server does not do it)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        loaded = model.load(args.model)
        samples = datasets.load(args.data, args.split)
        if args.limit:
            truth = label_indices(samples, loaded.class_names)
            samples = [samples[i] for i in balanced_order(truth, args.seed)[: args.limit]]
        report = evaluate(
            loaded.model,
            samples,
            loaded.class_names,
            loaded.input_size,
            args.batch_size,
            args.mirror,
        )
    except (model.ModelMetadataError, datasets.DatasetError, EvaluationError) as exc:
        print(f"appliance evaluate: {exc}", file=sys.stderr)
        return 2
    # Not beside the model: the shipped one lives in the repository.
    name = f"{loaded.model_id}-{args.split}{'-mirror' if args.mirror else ''}"
    out = args.out or Path("build/evaluate") / f"{name}.confusion.png"
    mirrored = ", each averaged with its mirror" if args.mirror else ""
    print(f"model {loaded.model_id} on {report.total} {args.split} images of {args.data}{mirrored}")
    print(report.format())
    plot_confusion(report, out, f"{loaded.model_id} on {args.split}{mirrored}")
    print(f"confusion matrix: {out}")
    return 0
