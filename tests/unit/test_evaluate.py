"""`appliance evaluate`: the report's arithmetic, and a labelled set whose accuracy is known.

The end-to-end tests use a tiny real Keras model saved as an artifact (evaluation does not care
which network it is), so they run in seconds; the ResNet50 itself is exercised in test_train.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appliance import cli, datasets, model
from appliance.imaging import image_to_input
from appliance.ml import evaluate


def tiny_artifact(path: Path, input_size: int = 32, classes: int = 10) -> Path:
    """A small real Keras model with the artifact's shape contract (uint8 in, softmax out)."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    net = keras.Model(inputs, outputs, name="tiny")
    names = list(model.CIFAR10_CLASSES[:classes])
    model.save(net, path, model.Metadata(class_names=names, input_size=input_size))
    return path


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_report_counts_and_formats():
    names = ["a", "b", "c"]
    truth = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 2])
    report = evaluate.Report.from_labels(truth, predicted, names)
    assert report.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert (report.correct, report.total) == (4, 6)
    assert report.per_class() == [("a", 1, 2), ("b", 2, 2), ("c", 1, 2)]
    text = report.format()
    assert "top-1 accuracy: 66.67% (4/6)" in text
    assert "b              100.00%  2/2" in text


def test_confusion_matrix_png(tmp_path):
    report = evaluate.Report.from_labels(np.array([0, 1]), np.array([0, 0]), ["x", "y"])
    path = evaluate.plot_confusion(report, tmp_path / "sub" / "cm.png", "title")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_balanced_order_prefix_takes_every_class_alike():
    labels = np.repeat(np.arange(10), 50)  # class-sorted, like the sources
    order = evaluate.balanced_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(500))
    assert np.bincount(labels[order[:40]], minlength=10).tolist() == [4] * 10
    assert np.array_equal(order, evaluate.balanced_order(labels, seed=3))
    assert not np.array_equal(order, evaluate.balanced_order(labels, seed=4))


def test_unknown_label_is_refused():
    samples = [datasets.Sample("x.png", b"", "unicorn")]
    with pytest.raises(evaluate.EvaluationError, match="unicorn"):
        evaluate.label_indices(samples, model.CIFAR10_CLASSES)


def write_set(root: Path, images: list[bytes], labels: list[str]) -> Path:
    for i, (data, label) in enumerate(zip(images, labels, strict=True)):
        path = root / "test" / label / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_evaluate_gives_the_known_accuracy(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default plot goes under ./build/evaluate
    artifact = tiny_artifact(tmp_path / "tiny.keras")
    loaded = model.load(artifact)
    rng = np.random.default_rng(0)
    images = [png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(20)]
    batch = np.stack([image_to_input(data, 32, evaluate.MAX_PIXELS) for data in images])
    predicted = loaded.predict(batch).argmax(axis=1)
    names = model.CIFAR10_CLASSES

    # Labelled with the model's own predictions: every answer is right.
    own = write_set(tmp_path / "own", images, [names[p] for p in predicted])
    assert cli.main(["evaluate", str(artifact), str(own)]) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy: 100.00% (20/20)" in out
    # Under build/, by model id: not beside the model (the shipped one is in the repository).
    assert (tmp_path / "build/evaluate" / f"{loaded.model_id}-test.confusion.png").exists()
    assert not (tmp_path / "tiny.confusion.png").exists()

    # Half the labels moved to another class: exactly half right, and per class as computed.
    labels = [names[p] if i % 2 == 0 else names[(p + 1) % 10] for i, p in enumerate(predicted)]
    moved = write_set(tmp_path / "moved", images, labels)
    png_out = tmp_path / "cm" / "moved.png"
    assert cli.main(["evaluate", str(artifact), str(moved), "--out", str(png_out)]) == 0
    out = capsys.readouterr().out
    assert "top-1 accuracy: 50.00% (10/20)" in out
    for k, name in enumerate(names):
        total = sum(label == name for label in labels)
        if total:
            correct = sum(lab == name and predicted[i] == k for i, lab in enumerate(labels))
            assert f"{100 * correct / total:.2f}%  {correct}/{total}" in out
    assert png_out.exists()


def test_mirror_averages_each_image_with_its_left_right_mirror(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    artifact = tiny_artifact(tmp_path / "tiny.keras")
    loaded = model.load(artifact)
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    mirrored = evaluate.predict(loaded.model, batch, batch_size=5, mirror=True)
    direct = loaded.predict(batch)
    flipped = loaded.predict(np.ascontiguousarray(batch[:, :, ::-1, :]))  # columns reversed
    np.testing.assert_allclose(mirrored, (direct + flipped) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(direct, flipped, atol=1e-3)  # so the mirror changed something
    upside_down = loaded.predict(np.ascontiguousarray(batch[:, ::-1, :, :]))
    assert not np.allclose(mirrored, (direct + upside_down) / 2, atol=1e-3)

    # The command: its labels are the mirrored probabilities' argmax; the plot says so by name.
    images = [png(image) for image in batch]
    names = model.CIFAR10_CLASSES
    own = write_set(tmp_path / "own", images, [names[p] for p in mirrored.argmax(axis=1)])
    assert cli.main(["evaluate", str(artifact), str(own), "--mirror"]) == 0
    out = capsys.readouterr().out
    assert "each averaged with its mirror" in out
    assert "top-1 accuracy: 100.00% (12/12)" in out
    assert (tmp_path / "build/evaluate" / f"{loaded.model_id}-test-mirror.confusion.png").exists()


def test_evaluate_reports_a_bad_model_path(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "none.keras"), str(tmp_path)]) == 2
    assert "metadata file not found" in capsys.readouterr().err
