"""What a GPU run hands back (appliance.ml.pieces): pieces, checksums, shapes, float16 storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.ml import pieces


def write_run(out: Path, limit: int = 4096) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    names = [f"layer{i}/kernel" for i in range(6)]
    weights = [rng.normal(size=(16, 16)).astype(np.float32) for _ in names]
    weights[3][0, 0] = 1e6  # beyond float16: kept as float32
    stored = pieces.to_storage(names, weights)
    entries, files = pieces.write_pieces(out, names, stored, limit=limit)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probs = rng.random((4, 10)).astype(np.float32)
    reference = pieces.write_reference(out, images, np.arange(4), list("abcd"), probs)
    pieces.write_manifest(out, {
        "keras_version": "3.15.1", "stem": "stock", "input_size": 32, "class_names": ["x"],
        "weights": [e.__dict__ for e in entries], "pieces": files, "reference": reference,
    })  # fmt: skip
    return weights


def test_round_trip_in_pieces_under_the_limit(tmp_path):
    weights = write_run(tmp_path)
    manifest = pieces.read_manifest(tmp_path)
    assert len(manifest["pieces"]) == 3  # 1 KiB allowed for each array's overhead: 2 a piece
    assert all(f["bytes"] <= 4096 for f in manifest["pieces"])
    pieces.verify_files(tmp_path, manifest)
    back = pieces.read_weights(tmp_path, manifest)
    assert [e["dtype"] for e in manifest["weights"]].count("float32") == 1
    assert all(b.dtype == np.float32 for b in back)
    assert back[3][0, 0] == 1e6
    for original, restored in zip(weights, back, strict=True):
        assert np.allclose(original, restored, rtol=1e-3, atol=1e-4)
    reference = pieces.read_reference(tmp_path, manifest)
    assert reference.names == list("abcd") and reference.images.dtype == np.uint8


def test_a_changed_byte_is_a_checksum_error(tmp_path):
    write_run(tmp_path)
    piece = tmp_path / "weights-01.npz"
    data = bytearray(piece.read_bytes())
    data[-100] ^= 0xFF
    piece.write_bytes(bytes(data))
    with pytest.raises(pieces.WeightsError, match=r"weights-01\.npz: checksum error"):
        pieces.verify_files(tmp_path, pieces.read_manifest(tmp_path))


def test_a_missing_piece_and_a_missing_manifest(tmp_path):
    write_run(tmp_path)
    (tmp_path / "reference.npz").unlink()
    with pytest.raises(pieces.WeightsError, match=r"reference\.npz: missing"):
        pieces.verify_files(tmp_path, pieces.read_manifest(tmp_path))
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(pieces.WeightsError, match="no manifest"):
        pieces.read_manifest(tmp_path)


def test_a_shape_other_than_the_manifest_says(tmp_path):
    write_run(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["weights"][2]["shape"] = [16, 8]
    with pytest.raises(pieces.WeightsError, match=r"float16\[16, 16\], the manifest says"):
        pieces.read_weights(tmp_path, manifest)


def test_diverged_weights_are_refused():
    with pytest.raises(pieces.WeightsError, match="NaN or inf"):
        pieces.to_storage(["w"], [np.array([1.0, np.nan], dtype=np.float32)])
