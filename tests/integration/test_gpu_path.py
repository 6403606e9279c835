"""The GPU path, run on this CPU: the device command and the import, end to end.

``appliance/ml/gpu_run.sh`` runs as it would on the lent machine, with a bundle made by
``appliance.ml.gpu_bundle`` (wheels for this Python) and a venv of Keras on JAX without TensorFlow
(made once, cached in build/jax-venv) standing in for that machine's python3: two steps of the
stock-stem ResNet50 on 64 CIFAR-10 images. Then ``appliance model import-weights`` here, on
TensorFlow: the manifest checks, the rebuilt model against the JAX outputs, the refusals.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from appliance import cli, model
from appliance.ml import gpu_bundle, pieces

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JAX_VENV = ROOT / "build" / "jax-venv"
# The newest jax[cpu] pip serves for Python 3.11; Keras and its needs as in the main venv.
JAX_PINS = ("jax[cpu]==0.10.2", "keras==3.15.1", "numpy==2.4.6", "pillow==13.0.0", "tqdm==4.70.1",
            "absl-py==2.5.1", "h5py==3.14.0", "ml_dtypes==0.6.0", "namex==0.1.0",
            "optree==0.20.0", "rich==15.0.0", "packaging==26.4")  # fmt: skip
PER_SPLIT = {"train": 8, "test": 8}  # per class: 80 of each, --limit-* takes 64
TRAIN_ARGS = ["--minutes", "30", "--stem", "stock", "--batch", "16", "--limit-train", "64",
              "--limit-test", "64", "--steps", "2"]  # fmt: skip
# Both sides run the float32 model on the same float16-stored weights, so only the kernels'
# summation order differs: measured 9e-8 (XLA on JAX against TensorFlow, this CPU). Rounding the
# weights to bfloat16 instead moved the outputs by 1e-4; the bound sits 100x above the noise and
# 10x below that. (The top-2 gap of these outputs was >= 1.8e-4, so labels cannot flip.)
MAX_ABS_DIFF = 1e-5


def jax_python() -> Path:
    """build/jax-venv's python, made once (remade when the pins change); skip if pip cannot."""
    if os.environ.get("APPLIANCE_TEST_GPU_PATH") != "1":
        # Minutes and a 700 MB venv: kept out of `make test` (and CI's hour).
        pytest.skip("the JAX run of the GPU path runs with `make test-gpu-path`")
    python, stamp = JAX_VENV / "bin" / "python", JAX_VENV / "pins.txt"
    if stamp.exists() and stamp.read_text() == "\n".join(JAX_PINS):
        return python
    shutil.rmtree(JAX_VENV, ignore_errors=True)
    began = time.monotonic()
    steps = [[sys.executable, "-m", "venv", str(JAX_VENV)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              *JAX_PINS]]  # fmt: skip
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(JAX_VENV, ignore_errors=True)
            pytest.skip(f"cannot make the JAX venv ({' '.join(step[:4])}): {done.stderr[-300:]}")
    stamp.write_text("\n".join(JAX_PINS))
    print(f"\nmade {JAX_VENV} in {time.monotonic() - began:.0f}s", file=sys.stderr)
    return python


@pytest.fixture(scope="module")
def tiny_archive(shared_archive, tmp_path_factory) -> Path:
    """A few CIFAR-10 JPEGs per class and split, in the shared archive's layout."""
    out = tmp_path_factory.mktemp("data") / "tiny.tar.gz"
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(shared_archive) as src, tarfile.open(out, "w:gz") as dest:
        for member in src:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in PER_SPLIT:
                continue
            if taken.get((parts[0], parts[1]), 0) < PER_SPLIT[parts[0]]:
                taken[parts[0], parts[1]] = taken.get((parts[0], parts[1]), 0) + 1
                dest.addfile(member, src.extractfile(member))
    return out


@pytest.fixture(scope="module")
def gpu_out(tiny_archive, tmp_path_factory) -> Path:
    """What gpu_run.sh leaves in $OUT, run with this CPU's JAX venv as the machine's python3."""
    python = jax_python()
    work = tmp_path_factory.mktemp("gpu")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        gpu_bundle.build_bundle(work / "bundle", tiny_archive, version)
    except gpu_bundle.BundleError as exc:
        pytest.skip(f"cannot download the bundle's wheels: {exc}")
    env = {**os.environ, "OUT": str(work / "out"), "GPU_BUNDLE": str(work / "bundle"),
           "PYTHON": str(python), "GPU_SITE": str(work / "site")}  # fmt: skip
    began = time.monotonic()
    done = subprocess.run(
        ["bash", str(ROOT / "appliance/ml/gpu_run.sh"), *TRAIN_ARGS],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    print(f"\ngpu_run.sh took {time.monotonic() - began:.0f}s", file=sys.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "out"


def test_the_gpu_side_imports_no_tensorflow():
    code = ("import sys\nimport appliance.ml.gpu_train, appliance.ml.pieces, appliance.model\n"
            "import appliance.datasets, appliance.ml.evaluate\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_run_leaves_what_the_device_tool_returns(gpu_out):
    files = sorted(p for p in gpu_out.rglob("*") if p.is_file())
    names = [p.name for p in files]
    assert len(files) <= 8 and all(p.parent == gpu_out for p in files)
    assert all(p.stat().st_size <= 16 * 2**20 for p in files)
    assert sum(p.stat().st_size for p in files) <= 64 * 2**20
    assert {"manifest.json", "reference.npz", "train.log", "weights-00.npz"} <= set(names)
    manifest = pieces.read_manifest(gpu_out)
    pieces.verify_files(gpu_out, manifest)
    assert manifest["keras_version"] == "3.15.1" and manifest["backend"] == "jax"
    assert (manifest["stem"], manifest["input_size"], manifest["steps"]) == ("stock", 32, 2)
    assert manifest["test_images"] == 64 and 0.0 <= manifest["test_accuracy"] <= 1.0
    assert manifest["reference"]["count"] == 64
    assert {e["dtype"] for e in manifest["weights"]} == {"float16"}
    assert len(manifest["weights"]) == 320  # ResNet50 (53 conv, 53 BatchNorm) + the head
    assert "tensorflow" not in (gpu_out / "train.log").read_text().lower()


def test_import_reproduces_the_gpu_outputs(gpu_out, tiny_archive, tmp_path, capsys):
    artifact = tmp_path / "resnet50.keras"
    argv = ["model", "import-weights", str(gpu_out), "--out", str(artifact),
            "--data", str(tiny_archive), "--test-limit", "64"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "labels agree on 64/64 (100.00%)" in printed, printed
    loaded = model.load(artifact)
    extra = loaded.metadata.extra
    assert extra["reference_label_agreement"] == 1.0
    assert extra["reference_max_abs_diff"] < MAX_ABS_DIFF
    # The same weights and the same 64 images on both sides: the same accuracy.
    manifest = json.loads((gpu_out / "manifest.json").read_text())
    assert loaded.metadata.test_accuracy == pytest.approx(manifest["test_accuracy"])
    assert extra["test_accuracy_gpu"] == manifest["test_accuracy"]
    reference = pieces.read_reference(gpu_out, manifest)
    probs = loaded.predict(reference.images)
    assert np.array_equal(probs.argmax(axis=1), reference.probs.argmax(axis=1))
    assert float(np.max(np.abs(probs - reference.probs))) < MAX_ABS_DIFF


def _refused(folder: Path, tiny_archive: Path, tmp_path: Path, capsys) -> str:
    artifact = tmp_path / "refused.keras"
    argv = ["model", "import-weights", str(folder), "--out", str(artifact),
            "--data", str(tiny_archive)]  # fmt: skip
    assert cli.main(argv) == 2
    assert not artifact.exists()
    return capsys.readouterr().err


def test_a_corrupt_piece_is_refused(gpu_out, tiny_archive, tmp_path, capsys):
    copy = Path(shutil.copytree(gpu_out, tmp_path / "copy"))
    piece = copy / "weights-01.npz"
    data = bytearray(piece.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of some weight's values
    piece.write_bytes(bytes(data))
    err = _refused(copy, tiny_archive, tmp_path, capsys)
    assert "weights-01.npz: checksum error" in err, err


def test_a_missing_piece_is_refused(gpu_out, tiny_archive, tmp_path, capsys):
    copy = Path(shutil.copytree(gpu_out, tmp_path / "copy"))
    (copy / "weights-02.npz").unlink()
    err = _refused(copy, tiny_archive, tmp_path, capsys)
    assert "weights-02.npz: missing" in err, err


def test_weights_of_another_shape_are_refused(gpu_out, tiny_archive, tmp_path, capsys):
    copy = Path(shutil.copytree(gpu_out, tmp_path / "copy"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stem"] = "cifar"  # 3x3 first convolution: the run's 7x7 kernel does not fit
    (copy / "manifest.json").write_text(json.dumps(manifest))
    err = _refused(copy, tiny_archive, tmp_path, capsys)
    assert "shape mismatch: weight 0 (conv1_conv/kernel) is [7, 7, 3, 64]" in err, err
