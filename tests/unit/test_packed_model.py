"""The packed artifact (X.npz + X.json): half the size, the same labels, and refused when altered.

One stock-stem ResNet50 is built for the module (the stem the shipped model uses), saved whole and
packed through ``appliance model pack``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance import cli, model
from appliance.imaging import image_to_input
from appliance.ml.evaluate import MAX_PIXELS

from .test_evaluate import png, write_set


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """(a .keras artifact, images, its predictions): weights trained a little, not fresh ones.

    A fresh ResNet50 answers the same for every image; a few steps on random labels make the
    outputs differ per image, so label agreement below means something.
    """
    import keras

    net = model.build(32, stem="stock", seed=3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = keras.utils.to_categorical(rng.integers(0, 10, 64), 10)
    net.compile(optimizer=keras.optimizers.SGD(0.05), loss="categorical_crossentropy")
    net.fit(images, labels, epochs=3, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("whole") / "resnet50.keras"
    model.save(net, path, model.Metadata(list(model.CIFAR10_CLASSES), 32, stem="stock"))
    return path, images, np.asarray(net(images, training=False))


@pytest.fixture(scope="module")
def packed(whole, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "resnet50.npz"
    assert cli.main(["model", "pack", str(whole[0]), "--out", str(out)]) == 0
    return out


def test_packed_model_is_half_the_size_and_gives_the_same_labels(whole, packed):
    path, images, probs = whole
    assert packed.stat().st_size < 0.55 * path.stat().st_size
    loaded = model.load(packed)
    got = loaded.predict(images)
    assert got.dtype == np.float32  # widened: it computes in float32 like the original
    assert np.mean(got.argmax(axis=1) == probs.argmax(axis=1)) >= 0.95
    assert np.max(np.abs(got - probs)) < 0.05
    # Its identity is the packed file's own, and its provenance says where it came from.
    assert loaded.model_id == f"resnet50-stock-32px-{model.sha256_file(packed)[:12]}"
    original = model.read_metadata(path)
    assert loaded.metadata.extra["packed_from"]["model_sha256"] == original.model_sha256


def test_a_bare_name_finds_the_packed_file(packed):
    assert model.artifact_paths(packed.with_suffix("")) == (packed, packed.with_suffix(".json"))
    assert model.load(packed.with_suffix("")).model_id == model.load(packed).model_id


def test_an_altered_packed_file_is_refused(packed, tmp_path):
    copy = tmp_path / "copy.npz"
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    copy.with_suffix(".json").write_text(packed.with_suffix(".json").read_text())
    with pytest.raises(model.ModelMetadataError, match=r"sha256 \w+ does not match"):
        model.load(copy)


def test_weights_of_another_stem_are_refused(packed, tmp_path):
    copy = tmp_path / "other.npz"
    copy.write_bytes(packed.read_bytes())
    meta = json.loads(packed.with_suffix(".json").read_text())
    meta.update(stem="cifar", model_sha256=None)  # no hash: the layout check must catch it
    copy.with_suffix(".json").write_text(json.dumps(meta))
    expected = r"shape mismatch: weight 0 .*\[7, 7, 3, 64\]"
    with pytest.raises(model.ModelMetadataError, match=expected):
        model.load(copy)


def test_an_npz_that_is_no_packed_model_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.zeros(3))
    meta = model.Metadata(list(model.CIFAR10_CLASSES), 32, stem="stock")
    model.write_metadata(path, meta)
    with pytest.raises(model.ModelMetadataError, match="not a packed weights file of format"):
        model.load(path)


def test_pack_measures_the_packed_models_accuracy(whole, tmp_path, capsys):
    """With --data the recorded accuracy is the packed model's, on that test split."""
    path, _, _ = whole
    rng = np.random.default_rng(5)
    images = [png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    loaded = model.load(path)
    batch = np.stack([image_to_input(data, 32, MAX_PIXELS) for data in images])
    predicted = loaded.predict(batch).argmax(axis=1)
    # Half labelled as the whole model answers, half one class off.
    names = model.CIFAR10_CLASSES
    labels = [names[p] if i % 2 == 0 else names[(p + 1) % 10] for i, p in enumerate(predicted)]
    data = write_set(tmp_path / "set", images, labels)
    out = tmp_path / "m.npz"
    assert cli.main(["model", "pack", str(path), "--out", str(out), "--data", str(data)]) == 0
    meta = model.read_metadata(out)
    assert meta.extra["test_images"] == 12
    packed_predicted = model.load(out).predict(batch).argmax(axis=1)
    right = [names[p] == label for p, label in zip(packed_predicted, labels, strict=True)]
    expected = np.mean(right)
    assert meta.test_accuracy == pytest.approx(expected)
    assert "test accuracy" in capsys.readouterr().out


def test_pack_wants_an_npz_name(whole, tmp_path, capsys):
    assert cli.main(["model", "pack", str(whole[0]), "--out", str(tmp_path / "m.keras")]) == 2
    assert "a packed artifact is a .npz file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_pack_beside_its_source_is_refused_and_the_sources_metadata_kept(whole, capsys):
    meta = model.artifact_paths(whole[0])[1]
    before = meta.read_bytes()
    out = whole[0].with_suffix(".npz")
    assert cli.main(["model", "pack", str(whole[0]), "--out", str(out)]) == 2
    assert f"its metadata file {meta} is the source's" in capsys.readouterr().err
    assert meta.read_bytes() == before and not out.exists()
    model.load(whole[0])  # still loads: its sha256 still matches
