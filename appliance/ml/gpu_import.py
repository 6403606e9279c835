"""``appliance model import-weights DIR``: a GPU run's weights made into an artifact, checked.

The checks, in order, each refusing with its own message:

1. the manifest, and the sha256 of every piece and of the reference file (a missing piece, a bad
   checksum);
2. the model rebuilt with :func:`appliance.model.build` (the run's stem and input size, float32)
   must have the manifest's weights: as many, each with the same name and shape (a shape
   mismatch, a different order);
3. the rebuilt model's outputs on the reference images against the GPU's: the labels must agree
   on at least 99% of them, and the largest probability difference is printed;
4. the test split evaluated with :mod:`appliance.ml.evaluate`, then :func:`appliance.model.save`.

A Keras version other than the run's is a warning, not a refusal: what a version change could
break (the weights' order, names and shapes, or what the layers compute) is checked directly by 2
and 3, so a refusal would only block imports proven right, while a wrong one is refused anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance import datasets, model
from appliance.ml import pieces
from appliance.ml.evaluate import balanced_order, evaluate, label_indices, predict
from appliance.ml.training_data import data_sha256

log = logging.getLogger(__name__)
MIN_AGREEMENT = 0.99


class GpuImportError(ValueError):
    """The weights do not fit the model or do not reproduce the GPU's outputs."""


@dataclass(frozen=True)
class Comparison:
    count: int
    agree: int
    max_abs_diff: float

    @property
    def agreement(self) -> float:
        return self.agree / self.count if self.count else 0.0


def compare(probs: np.ndarray, reference: np.ndarray) -> Comparison:
    if probs.shape != reference.shape:
        raise GpuImportError(f"outputs of shape {probs.shape}, the reference has {reference.shape}")
    agree = int(np.sum(probs.argmax(axis=1) == reference.argmax(axis=1)))
    return Comparison(len(probs), agree, float(np.max(np.abs(probs - reference), initial=0.0)))


def import_weights(
    folder: Path,
    out: Path,
    data: str,
    test_limit: int | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> model.Metadata:
    import keras

    manifest = pieces.read_manifest(folder)
    pieces.verify_files(folder, manifest)
    print(
        f"manifest: {len(manifest['pieces'])} pieces and the reference file match their sha256; "
        f"trained with keras {manifest['keras_version']} ({manifest.get('backend')}, "
        f"{manifest.get('device')}), {manifest.get('steps')} steps"
    )
    if manifest["keras_version"] != keras.__version__:
        log.warning(
            "keras %s here, %s on the GPU: importing anyway, the weight layout and the outputs "
            "are checked below",
            keras.__version__,
            manifest["keras_version"],
        )
    stem, size = manifest["stem"], int(manifest["input_size"])
    class_names = list(manifest["class_names"])
    keras.mixed_precision.set_global_policy("float32")
    net = model.build(size, class_names, stem)
    pieces.check_layout(net, pieces.entries(manifest), stem)
    net.set_weights(pieces.read_weights(folder, manifest))

    reference = pieces.read_reference(folder, manifest)
    result = compare(predict(net, reference.images), reference.probs)
    print(
        f"reference: {result.count} test images, labels agree on {result.agree}/{result.count} "
        f"({100 * result.agreement:.2f}%), max |probability difference| {result.max_abs_diff:.3g}"
    )
    if result.agreement < min_agreement:
        raise GpuImportError(
            f"the rebuilt model's labels agree with the GPU's on {100 * result.agreement:.2f}% of "
            f"the reference images, under {100 * min_agreement:g}%: not the trained model"
        )

    if Path(data).is_file() and data_sha256(data) != manifest.get("training_data_sha256"):
        log.warning("%s is not the data the GPU run used (%s)", data, manifest.get("training_data"))
    samples = datasets.load(data, "test")
    if test_limit:
        truth = label_indices(samples, class_names)
        samples = [samples[i] for i in balanced_order(truth, 0)[:test_limit]]
    report = evaluate(net, samples, class_names, size)
    print(f"test split of {data}: {report.format().splitlines()[0]}")
    gpu_accuracy = manifest.get("test_accuracy")
    metadata = model.Metadata(
        class_names=class_names,
        input_size=size,
        stem=stem,
        test_accuracy=report.top1,
        training_data_sha256=manifest.get("training_data_sha256"),
        extra=_provenance(manifest, result, report.total, gpu_accuracy),
    )
    return model.save(net, out, metadata)


def _provenance(
    manifest: dict[str, Any], result: Comparison, test_images: int, gpu_accuracy: Any
) -> dict[str, Any]:
    keep = ("training_data", "training_data_sha256_method", "steps", "epochs", "batch_size",
            "training_seconds", "images_per_second", "recipe", "schedule", "augmentation",
            "precision", "device", "backend", "jax_version")  # fmt: skip
    return {
        "trained": True,
        "trained_on": "GPU, appliance.ml.gpu_train (Keras on JAX)",
        **{key: manifest[key] for key in keep if key in manifest},
        "keras_version_trained": manifest["keras_version"],
        "test_images": test_images,
        "test_accuracy_gpu": gpu_accuracy,
        "test_images_gpu": manifest.get("test_images"),
        "reference_images": result.count,
        "reference_label_agreement": result.agreement,
        "reference_max_abs_diff": result.max_abs_diff,
    }
