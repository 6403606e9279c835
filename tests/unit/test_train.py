"""`appliance train`: one shared input path, reproducible batches, a real interruption and resume.

The training run is a real ResNet50 (stock stem, 32x32) on 16 CIFAR-10 images, 3 epochs of 2
steps: started as a process, killed with SIGKILL once its first checkpoint exists, then resumed by
the same command in-process. Every check on the trained artifact shares that one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from appliance import datasets, model
from appliance.imaging import image_to_input
from appliance.ml import checkpoints, compiled, train, training_data
from appliance.ml.evaluate import MAX_PIXELS, decode_samples
from appliance.ml.recipe import Recipe

PER_CLASS = {"train": 2, "test": 1}
ARGS = ["--stem", "stock", "--limit", "16", "--batch-size", "8", "--epochs", "3"]
# No warmup (the test has 6 steps in all) and a rate that lowers this loss within them; 0.05
# overshoots at batch 8 (the default 0.1 is meant per 128 images).
ARGS += ["--lr", "0.01", "--warmup-epochs", "0", "--seed", "0"]
# float32 whatever the CPU: six bfloat16 steps on 16 images are too noisy to show the loss falling
# (on an AMX CPU --precision auto would take bfloat16; the real runs show it learns).
ARGS += ["--precision", "float32"]


@pytest.fixture(scope="module")
def data(shared_archive, tmp_path_factory) -> Path:
    """A few CIFAR-10 JPEGs per class and split, in the archive's own layout."""
    root = tmp_path_factory.mktemp("cifar")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(shared_archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in PER_CLASS:
                continue
            key = (parts[0], parts[1])
            if taken.get(key, 0) < PER_CLASS[parts[0]]:
                taken[key] = taken.get(key, 0) + 1
                dest = root / member.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return root


def recipe(data: Path) -> Recipe:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--data", str(data), *ARGS])
    return train.recipe_from_args(args, training_data.data_sha256(str(data)))


def run_train(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return train.run(parser.parse_args(list(argv)))


# --- the input path and the batches (no model) ----------------------------------------------------


def test_training_and_serving_give_the_model_the_same_input(data):
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
def test_a_cutout_outside_zero_to_the_input_size_is_refused(data, value, capsys):
    assert run_train("--data", str(data), *ARGS, "--cutout", value) == 2
    assert f"--cutout {value}: the square's side must be 0 (none) to the input size (32 px)" in (
        capsys.readouterr().err
    )


def test_a_run_with_cutout_records_it_and_does_not_resume_one_without(data):
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


def test_data_sha256_is_documented_manifest(data, tmp_path):
    lines = []
    for path in sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()):
        digest = hashlib.sha256((data / path).read_bytes()).hexdigest()
        lines.append(f"{digest}  {path}\n")
    expected = hashlib.sha256("".join(lines).encode()).hexdigest()
    assert training_data.data_sha256(str(data)) == expected
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"not really")
    assert training_data.data_sha256(str(archive)) == hashlib.sha256(b"not really").hexdigest()


# --- one real run: interrupted, resumed, exported -------------------------------------------------


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("model") / "resnet50.keras"
    # A checkpoint after every step: the kill lands within an epoch, the case that resumes at a
    # step (an epoch boundary is the same with step 0).
    argv = ["--data", str(data), "--out", str(out), *ARGS, "--checkpoint-minutes", "0"]
    state_file = checkpoints.checkpoint_dir(out) / checkpoints.STATE_FILE
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = out.with_name("first-run.log")
    with log_path.open("w") as log_file:
        first = subprocess.Popen(
            [sys.executable, "-m", "appliance", "train", *argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 600
        try:
            while not (checkpoints.read_state(state_file.parent) or {}).get("checkpoint"):
                assert first.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
                time.sleep(0.1)
        finally:
            first.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
            first.wait()
    killed = checkpoints.read_state(state_file.parent)
    killed_at = (killed["epoch"], killed["step"])

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("appliance.ml.train")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        rc = run_train(*argv)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return {"out": out, "argv": argv, "killed_at": killed_at, "rc": rc, "log": records}


def test_resume_continues_from_the_checkpointed_step(trained):
    assert trained["rc"] == 0
    epoch, step = trained["killed_at"]
    assert (0, 1) <= (epoch, step) < (3, 0) and 0 <= step < 2
    within = f" and {step}/2 steps of the next" if step else ""
    assert (
        f"resuming from {checkpoints.checkpoint_dir(trained['out'])} after epoch {epoch}/3{within}"
        in trained["log"]
    )
    # Only the epochs after the checkpoint ran again; the first run's are kept in the history.
    epochs_run = [line.split()[1] for line in trained["log"] if line.startswith("epoch ")]
    assert epochs_run == [f"{e}/3" for e in range(epoch + 1, 4)]
    state = checkpoints.read_state(checkpoints.checkpoint_dir(trained["out"]))
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert all(0.0 <= h["probe_accuracy"] <= 1.0 for h in state["history"])
    assert state["finished"] is True and state["step"] == 0
    assert sorted(p.name for p in checkpoints.checkpoint_dir(trained["out"]).glob("*.keras")) == [
        "epoch-0003.keras"
    ]


def test_training_lowers_the_loss(trained, data):
    import keras

    samples = datasets.load(str(data), "train")
    train_split, _, _ = training_data.load_training_data(str(data), recipe(data))
    labels = np.eye(10)[train_split.labels]
    loss = keras.losses.CategoricalCrossentropy()
    initial = model.build(32, stem="stock", seed=0)  # the run's starting weights (same seed)
    trained_model = model.load(trained["out"]).model
    # training=True: BatchNorm uses the batch's statistics, as in the training steps themselves.
    before = float(loss(labels, initial(train_split.images, training=True)))
    after = float(loss(labels, trained_model(train_split.images, training=True)))
    assert len(samples) == 20 and len(train_split.labels) == 16
    assert after < before - 0.1, (before, after)


def test_the_artifact_records_its_training(trained, data):
    loaded = model.load(trained["out"])
    meta = loaded.metadata
    assert meta.class_names == list(model.CIFAR10_CLASSES)
    assert (meta.input_size, meta.stem) == (32, "stock")
    assert meta.training_data_sha256 == training_data.data_sha256(str(data))
    assert meta.test_accuracy is not None and 0.0 <= meta.test_accuracy <= 1.0
    assert meta.extra["epochs"] == 3 and meta.extra["test_images"] == 10
    assert meta.extra["training_data_sha256_method"] == training_data.DATA_SHA256_METHOD
    assert meta.extra["precision"] == "float32"
    assert [h["epoch"] for h in meta.extra["history"]] == [1, 2, 3]
    assert meta.extra["training_seconds"] > 0
    # No optimizer state in what is served: the same image through the server's decoder works.
    image = next(iter(sorted((data / "test").rglob("*.jpg")))).read_bytes()
    probs = loaded.predict(image_to_input(image, 32, MAX_PIXELS)[None])
    assert probs.shape == (1, 10) and abs(float(probs.sum()) - 1.0) < 1e-4


def test_rerun_of_a_finished_run_does_nothing(trained, caplog):
    caplog.set_level(logging.INFO, logger="appliance.ml.train")
    before = trained["out"].read_bytes()
    started = time.monotonic()
    assert run_train(*trained["argv"]) == 0
    assert "is already trained (3 epochs)" in caplog.text
    assert time.monotonic() - started < 30
    assert trained["out"].read_bytes() == before


def test_other_settings_do_not_resume_a_checkpoint(trained, capsys):
    argv = [*trained["argv"], "--epochs", "5"]
    assert run_train(*argv) == 2
    err = capsys.readouterr().err
    assert "other settings (epochs differ)" in err and "--fresh" in err


def test_go_no_go_stops_a_run_that_is_not_on_track(data, tmp_path, capsys):
    out = tmp_path / "resnet50.keras"
    # No 16-image model scores 100% on the probe after one epoch: the run stops there.
    rc = run_train("--data", str(data), "--out", str(out), *ARGS, "--go-no-go", "1:1.0")
    assert rc == train.EXIT_NO_GO
    err = capsys.readouterr().err
    assert "go/no-go after epoch 1: the probe scored" in err and "under 100.0%" in err
    assert not out.exists()
    state = checkpoints.read_state(checkpoints.checkpoint_dir(out))
    assert state["epoch"] == 1 and state["checkpoint"] == "epoch-0001.keras"
    assert "finished" not in state


@pytest.mark.parametrize(
    ("value", "message"),
    [("3", "expected EPOCH:ACCURACY"), ("0:0.5", "at least 1"), ("2:1.5", "in (0, 1]")],
)
def test_a_bad_go_no_go_says_what_is_wrong(value, message, capsys):
    with pytest.raises(SystemExit):
        run_train("--go-no-go", value)
    assert message in capsys.readouterr().err


def test_init_from_starts_at_the_artifacts_weights(trained, data, tmp_path):
    out = tmp_path / "more.keras"
    # A rate too small to move a weight: what comes out is what went in (BatchNorm's moving
    # statistics aside, which follow the data whatever the rate).
    argv = ["--data", str(data), "--out", str(out), *ARGS, "--epochs", "1", "--lr", "1e-12"]
    assert run_train(*argv, "--init-from", str(trained["out"])) == 0
    source, more = model.load(trained["out"]), model.load(out)
    kernels = [w.name for w in more.model.weights if "kernel" in w.name]
    assert kernels
    source_weights = {w.path: np.asarray(w) for w in source.model.weights}
    for weight in more.model.weights:
        if "kernel" in weight.name:
            np.testing.assert_allclose(np.asarray(weight), source_weights[weight.path], atol=1e-6)
    meta = more.metadata.extra
    assert meta["init_from"]["model_id"] == source.metadata.model_id
    assert meta["total_epochs"] == 4 and meta["epochs"] == 1
    assert meta["recipe"]["init_sha256"] == model.sha256_file(trained["out"])


def test_init_from_refuses_another_network(trained, data, tmp_path, capsys):
    out = tmp_path / "other.keras"
    argv = ["--data", str(data), "--out", str(out), *ARGS, "--input-size", "48"]
    assert run_train(*argv, "--init-from", str(trained["out"])) == 2
    assert "trained at 32px, but this run trains at 48px" in capsys.readouterr().err


def test_init_from_another_stem_needs_weights_of_the_same_shapes(trained, data, tmp_path, capsys):
    argv = ["--data", str(data), *ARGS, "--epochs", "1", "--lr", "1e-12"]
    # stock into stride1: the same weights, now seeing four times the detail.
    out = tmp_path / "dense.keras"
    assert run_train(*argv, "--out", str(out), "--init-from", str(trained["out"]),
                     "--stem", "stride1") == 0  # fmt: skip
    source, dense = model.load(trained["out"]), model.load(out)
    assert dense.metadata.stem == "stride1"
    assert dense.metadata.extra["init_from"]["stem"] == "stock"
    np.testing.assert_allclose(
        np.asarray(dense.model.get_layer("resnet50").get_layer("conv1_conv").kernel),
        np.asarray(source.model.get_layer("resnet50").get_layer("conv1_conv").kernel),
        atol=1e-6,
    )
    # stock into cifar: conv1 is 3x3 there, so the weights do not fit.
    other = tmp_path / "cifar.keras"
    assert run_train(*argv, "--out", str(other), "--init-from", str(trained["out"]),
                     "--stem", "cifar") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "its stock stem's weights do not fit the cifar stem's" in err
    assert "conv1_conv/kernel (7, 7, 3, 64) vs (3, 3, 3, 64)" in err and not other.exists()


def test_linear_schedule_warms_up_then_falls_to_zero():
    from appliance.ml.keras_schedules import WarmupLinear

    rate = WarmupLinear(peak=0.1, warmup=10, total=110)
    values = {step: float(rate(step)) for step in (0, 5, 10, 60, 110, 200)}
    assert values[0] == pytest.approx(0.004) and values[10] == pytest.approx(0.1)
    assert values[5] == pytest.approx(0.052) and values[60] == pytest.approx(0.05)
    assert values[110] == 0.0 and values[200] == 0.0


def test_a_checkpoint_from_before_a_recipe_field_still_resumes(data):
    r = recipe(data)
    saved = dataclasses.asdict(r)
    del saved["schedule"], saved["init_sha256"]  # what a run recorded before those fields
    assert checkpoints.recipe_differences({"recipe": saved}, r) == []
    linear = dataclasses.replace(r, schedule="linear")
    assert checkpoints.recipe_differences({"recipe": saved}, linear) == ["schedule"]


def test_auto_precision_takes_bfloat16_only_where_the_cpu_has_amx(monkeypatch):
    amx = "processor : 0\nflags : fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert compiled.has_amx_bf16(amx)
    assert not compiled.has_amx_bf16("processor : 0\nflags : fpu avx2 avx512_bf16\n")
    monkeypatch.setattr(compiled, "has_gpu", lambda: False)
    # Without AVX-512 (which AMX CPUs have), so bfloat16 alone must turn XLA off below.
    monkeypatch.setattr(compiled, "has_avx512", lambda cpuinfo=None: False)
    monkeypatch.setattr(compiled, "has_amx_bf16", lambda cpuinfo=None: True)
    assert compiled.precision_policy("auto") == "mixed_bfloat16"
    assert compiled.use_xla(None, "mixed_bfloat16") is False  # oneDNN's AMX kernels, not XLA's
    assert compiled.use_xla(True, "mixed_bfloat16") is True
    monkeypatch.setattr(compiled, "has_amx_bf16", lambda cpuinfo=None: False)
    assert compiled.precision_policy("auto") == "float32"
    assert compiled.precision_policy("bfloat16") == "mixed_bfloat16"


def test_auto_xla_only_where_onednn_lacks_avx512(monkeypatch):
    avx512 = "processor : 0\nflags : fpu avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16\n"
    assert compiled.has_avx512(avx512)
    assert not compiled.has_avx512("processor : 0\nflags : fpu avx2 fma\n")
    assert not compiled.has_avx512("processor : 0\n")  # no flags line at all
    monkeypatch.setattr(compiled, "has_gpu", lambda: False)
    monkeypatch.setattr(compiled, "has_avx512", lambda cpuinfo=None: True)
    assert compiled.use_xla(None, "float32") is False  # oneDNN's avx512_core kernels
    assert compiled.use_xla(True, "float32") is True
    monkeypatch.setattr(compiled, "has_avx512", lambda cpuinfo=None: False)
    assert compiled.use_xla(None, "float32") is True  # AVX2: XLA's step was the faster
    assert compiled.use_xla(False, "float32") is False
    monkeypatch.setattr(compiled, "has_gpu", lambda: True)
    monkeypatch.setattr(compiled, "has_avx512", lambda cpuinfo=None: True)
    assert compiled.use_xla(None, "mixed_float16") is True
