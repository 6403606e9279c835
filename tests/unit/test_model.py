"""The artifact: save/load keeps predictions, mismatched metadata is refused, fetch checks sha256.

One ResNet50 (CIFAR stem, the default and the one built by cloning) is built for the module; the
metadata and fetch checks use a tiny real Keras model, since they are about files and shapes.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance import cli, model
from appliance.ml import artifact_fetch

from .test_evaluate import tiny_artifact


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """(artifact path, a batch of images, the built model's predictions for them)."""
    path = tmp_path_factory.mktemp("resnet") / "resnet50.keras"
    net = model.build(32, stem="cifar", seed=7)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probs = np.asarray(net(images, training=False))
    model.save(net, path, model.Metadata(list(model.CIFAR10_CLASSES), 32, stem="cifar"))
    return path, images, probs


def test_save_and_load_keep_predictions_identical(resnet):
    path, images, probs = resnet
    loaded = model.load(path)
    np.testing.assert_array_equal(loaded.predict(images), probs)
    assert loaded.metadata.model_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.model_id == f"resnet50-cifar-32px-{loaded.metadata.model_sha256[:12]}"
    # The stem is really 3x3 stride 1 with no pooling: 32x32 reaches the first stage.
    backbone = loaded.model.get_layer("resnet50")
    assert backbone.get_layer("conv1_conv").kernel_size == (3, 3)
    assert backbone.get_layer("conv2_block1_out").output.shape[1:3] == (32, 32)


@pytest.mark.parametrize(
    ("stem", "side"),
    [("stock", 8), ("cifar", 32), ("pooled", 16), ("stride1", 16), ("fullres", 32)],
)
def test_each_stem_gives_the_first_stage_its_feature_map_size(stem: str, side: int) -> None:
    backbone = model.build(32, stem=stem).get_layer("resnet50")
    assert backbone.get_layer("conv2_block1_out").output.shape[1:3] == (side, side)
    assert backbone.get_layer("conv5_block3_out").output.shape[1:3] == (side // 8, side // 8)


@pytest.mark.parametrize("stem", ["stride1", "fullres"])
def test_the_stride1_stems_have_the_stock_stems_weights(stem: str) -> None:
    stock, other = model.build(32, stem="stock"), model.build(32, stem=stem)
    assert [w.shape for w in stock.weights] == [w.shape for w in other.weights]
    conv1 = other.get_layer("resnet50").get_layer("conv1_conv")
    assert conv1.kernel_size == (7, 7) and conv1.strides == (1, 1)


def test_metadata_with_another_stem_is_refused(resnet, tmp_path):
    path, _, _ = resnet
    copy = with_metadata(path, tmp_path / "copy.keras", stem="stock")
    with pytest.raises(model.ModelMetadataError, match=r"stem 'stock' does not match.*'cifar'"):
        model.load(copy)


def with_metadata(src: Path, dest: Path, **changes: object) -> Path:
    """Copy an artifact, changing fields of its metadata (the model file is untouched)."""
    src_model, src_meta = model.artifact_paths(src)
    dest_model, dest_meta = model.artifact_paths(dest)
    shutil.copyfile(src_model, dest_model)
    meta = json.loads(src_meta.read_text())
    meta.update(changes)
    dest_meta.write_text(json.dumps(meta))
    return dest_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("tiny") / "tiny.keras")


def test_wrong_class_count_is_refused(tiny, tmp_path):
    copy = with_metadata(tiny, tmp_path / "m.keras", class_names=list(model.CIFAR10_CLASSES[:9]))
    with pytest.raises(
        model.ModelMetadataError, match="9 class_names but the model has 10 outputs"
    ):
        model.load(copy)


def test_wrong_input_size_is_refused(tiny, tmp_path):
    copy = with_metadata(tiny, tmp_path / "m.keras", input_size=64)
    with pytest.raises(model.ModelMetadataError, match=r"input_size 64 does not match .*32, 32, 3"):
        model.load(copy)


def test_a_changed_model_file_is_refused(tiny, tmp_path):
    copy = with_metadata(tiny, tmp_path / "m.keras")
    with copy.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(model.ModelMetadataError, match=r"does not match .* recorded in m\.json"):
        model.load(copy)


# --- fetch ---------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def http_root(tmp_path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server over a folder: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_from_a_path(tiny, tmp_path):
    out = tmp_path / "out" / "resnet50.keras"
    metadata = artifact_fetch.fetch(str(tiny), sha256(tiny), out)
    assert out.read_bytes() == tiny.read_bytes()
    assert out.with_suffix(".json").read_text() == tiny.with_suffix(".json").read_text()
    assert metadata.model_sha256 == sha256(tiny)
    assert sorted(p.name for p in out.parent.iterdir()) == ["resnet50.json", "resnet50.keras"]


def test_fetch_from_a_url(tiny, tmp_path, http_root, capsys):
    root, base = http_root
    (root / "models").mkdir()
    with_metadata(tiny, root / "models" / "v1.keras")
    out = tmp_path / "resnet50.keras"
    argv = ["model", "fetch", f"{base}/models/v1.keras", "--sha256", sha256(tiny)]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert "fetched" in capsys.readouterr().out
    assert sha256(out) == sha256(tiny)
    assert model.load(out).metadata.class_names == list(model.CIFAR10_CLASSES)


def test_fetch_with_a_wrong_sha256_keeps_nothing(tiny, tmp_path, http_root, capsys):
    root, base = http_root
    with_metadata(tiny, root / "v1.keras")
    out = tmp_path / "out" / "resnet50.keras"
    wrong = "0" * 64
    argv = ["model", "fetch", f"{base}/v1.keras", "--sha256", wrong, "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"sha256 {sha256(tiny)} does not match the expected {wrong}; nothing kept" in err
    assert list(out.parent.iterdir()) == []  # no model, no metadata, no temporary folder


def test_fetch_failure_leaves_the_previous_artifact(tiny, tmp_path, http_root):
    out = tmp_path / "resnet50.keras"
    artifact_fetch.fetch(str(tiny), sha256(tiny), out)
    before = out.read_bytes()
    with pytest.raises(artifact_fetch.ModelFetchError, match="does not match"):
        artifact_fetch.fetch(str(tiny), "f" * 64, out)
    with pytest.raises(artifact_fetch.ModelFetchError, match="HTTP 404"):
        artifact_fetch.fetch(f"{http_root[1]}/none.keras", sha256(tiny), out, timeout=5)
    assert out.read_bytes() == before


def test_fetch_refuses_metadata_of_another_model(tiny, tmp_path):
    src = with_metadata(tiny, tmp_path / "src.keras", model_sha256="a" * 64)
    with pytest.raises(artifact_fetch.ModelFetchError, match="metadata belongs to another model"):
        artifact_fetch.fetch(str(src), sha256(src), tmp_path / "out" / "m.keras")


def test_fetch_needs_a_hex_sha256(tiny, tmp_path):
    with pytest.raises(artifact_fetch.ModelFetchError, match="64 hex digits"):
        artifact_fetch.fetch(str(tiny), "abc", tmp_path / "m.keras")
