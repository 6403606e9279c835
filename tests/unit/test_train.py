"""`appliance train`: a real interruption and resume, and what the trained artifact records.

The training run is a real ResNet50 (stock stem, 32x32) on 16 CIFAR-10 images, 3 epochs of 2
steps: started as a process, killed with SIGKILL once its first checkpoint exists, then resumed by
the same command in-process. Every check on the trained artifact shares that one run.
"""

from __future__ import annotations

import argparse
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
from appliance.ml import checkpoints, train, training_data
from appliance.ml.evaluate import MAX_PIXELS
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
