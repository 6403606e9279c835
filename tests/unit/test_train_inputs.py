"""`appliance train`'s input path and batches (no model): as served, augmented, reproducible."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from appliance import datasets
from appliance.ml import checkpoints, training_data
from appliance.ml.evaluate import decode_samples
from appliance.ml.recipe import Recipe
from tests.unit.test_train import ARGS, data, recipe, run_train  # noqa: F401 (data: a fixture)


def test_training_and_serving_give_the_model_the_same_input(data):  # noqa: F811
    from appliance.server.request_parsing import to_input
    from appliance.server.settings import ServerSettings

    everything = dataclasses.replace(recipe(data), limit=None)
    train_split, _, _ = training_data.load_training_data(str(data), everything)
    samples = datasets.load(str(data), "train")
    settings = ServerSettings()
    for sample in samples:
        served = to_input(sample.image, "image", settings, 32)
        assert served.dtype == np.uint8 and served.shape == (32, 32, 3)
        # The training set holds exactly that array (decoded once, by the same function).
        assert any(np.array_equal(served, image) for image in train_split.images)
        np.testing.assert_array_equal(decode_samples([sample], 32)[0], served)


def crops_and_flips(image: np.ndarray, pad: int) -> list[np.ndarray]:
    size = image.shape[0]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    offsets = range(2 * pad + 1)
    crops = [padded[y : y + size, x : x + size] for y in offsets for x in offsets]
    return crops + [c[:, ::-1] for c in crops]


def test_augmentation_is_a_seeded_crop_and_flip():
    images = np.random.default_rng(0).integers(1, 256, (16, 32, 32, 3), dtype=np.uint8)
    seed = np.array([0, 5], dtype=np.int64)
    out = np.asarray(training_data.augment_batch(images, seed, pad=4))
    assert out.shape == images.shape and out.dtype == np.uint8
    for original, augmented in zip(images, out, strict=True):
        assert any(np.array_equal(augmented, c) for c in crops_and_flips(original, 4))
    assert np.array_equal(out, np.asarray(training_data.augment_batch(images, seed, pad=4)))
    other = np.asarray(training_data.augment_batch(images, np.array([0, 6]), pad=4))
    assert not np.array_equal(out, other)
    assert not np.array_equal(out, images)


def test_cutout_zeroes_one_seeded_square_and_keeps_the_crops_and_flips():
    images = np.random.default_rng(1).integers(1, 256, (32, 32, 32, 3), dtype=np.uint8)
    seed = np.array([0, 5], dtype=np.int64)
    plain = np.asarray(training_data.augment_batch(images, seed, pad=4))
    cut = np.asarray(training_data.augment_batch(images, seed, pad=4, cutout=16))
    assert np.array_equal(cut, np.asarray(training_data.augment_batch(images, seed, 4, cutout=16)))
    for before, after in zip(plain, cut, strict=True):
        changed = np.argwhere((before != after).any(axis=-1))
        # Only zeros were written, inside one square of at most 16 x 16 (clipped at the edges).
        assert (after[tuple(changed.T)] == 0).all()
        rows, cols = changed[:, 0], changed[:, 1]
        assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16
        # The crop's own zero padding may overlap it, but never covers all of it.
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(changed) == height * width or (before == 0).any()
    # Squares differ in place from image to image; some are clipped, most cover more than a
    # quarter of the full square.
    areas = [int((b != a).any(axis=-1).sum()) for b, a in zip(plain, cut, strict=True)]
    assert len(set(areas)) > 1 and sum(a > 64 for a in areas) > len(areas) // 2


@pytest.mark.parametrize("value", ["-1", "33"])
def test_a_cutout_outside_zero_to_the_input_size_is_refused(data, value, capsys):  # noqa: F811
    assert run_train("--data", str(data), *ARGS, "--cutout", value) == 2
    assert f"--cutout {value}: the square's side must be 0 (none) to the input size (32 px)" in (
        capsys.readouterr().err
    )


def test_a_run_with_cutout_records_it_and_does_not_resume_one_without(data):  # noqa: F811
    r = recipe(data)
    cut = dataclasses.replace(r, cutout=16)
    assert cut.augmentation.endswith(", a 16-px square cut out")
    assert r.augmentation == "random crop from 4-px zero padding, horizontal flip"
    saved = dataclasses.asdict(r)
    del saved["cutout"]  # a checkpoint from before the field: no cutout
    assert checkpoints.recipe_differences({"recipe": saved}, r) == []
    assert checkpoints.recipe_differences({"recipe": saved}, cut) == ["cutout"]


def test_a_resumed_run_sees_the_same_batches():
    images = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    split = training_data.Split(images, np.arange(40) % 10)
    r = Recipe(
        stem="stock", input_size=1, epochs=3, batch_size=8, peak_lr=0.1, warmup_epochs=0,
        momentum=0.9, weight_decay=0, label_smoothing=0, seed=3, limit=None, val_split=0,
        data_sha256="",
    )  # fmt: skip
    whole = list(training_data.epoch_batches(split, r, steps=5, start_epoch=0))
    resumed = list(training_data.epoch_batches(split, r, steps=5, start_epoch=1))
    assert len(whole) == 15 and len(resumed) == 10
    for a, b in zip(whole[5:], resumed, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # Resumed within an epoch: the rest of that epoch's batches, then the same epochs after it.
    within = list(training_data.epoch_batches(split, r, steps=5, start_epoch=1, start_step=2))
    assert len(within) == 8
    for a, b in zip(whole[7:], within, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # Each epoch is a permutation of the whole set, and the epochs differ.
    epochs = [np.sort(np.concatenate([b[1] for b in whole[i : i + 5]])) for i in (0, 5, 10)]
    assert all(np.array_equal(e, np.sort(split.labels)) for e in epochs)
    assert not np.array_equal(whole[0][0], whole[5][0])


def test_data_sha256_is_documented_manifest(data, tmp_path):  # noqa: F811
    lines = []
    for path in sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()):
        digest = hashlib.sha256((data / path).read_bytes()).hexdigest()
        lines.append(f"{digest}  {path}\n")
    expected = hashlib.sha256("".join(lines).encode()).hexdigest()
    assert training_data.data_sha256(str(data)) == expected
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"not really")
    assert training_data.data_sha256(str(archive)) == hashlib.sha256(b"not really").hexdigest()
