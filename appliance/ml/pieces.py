"""What a GPU run hands back, and the checks on it: weight pieces, reference outputs, a manifest.

A run's output folder holds

- ``weights-NN.npz``: the model's weights in ``model.get_weights()`` order, float16 (float32 for
  a tensor that float16 cannot hold), packed into pieces of at most 16 MiB, the largest file the
  device tool returns;
- ``reference.npz``: a fixed set of test images (uint8), their labels and names, and the float32
  softmax outputs the run's float32 model gave them, to compare the rebuilt model against;
- ``manifest.json``, written last: versions, recipe, every weight's name, shape, dtype and piece,
  and the sha256 of every other file.

Only numpy here: the GPU side (JAX) and the CPU side (TensorFlow) both use this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.model import sha256_file

FORMAT = "appliance-gpu-weights/1"
MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
PIECE_LIMIT = 16 * 2**20  # the device tool returns files of at most 16 MiB each
# Room for the .npz container: a zip entry and an .npy header per array, well under 1 KiB each.
_PER_ARRAY_OVERHEAD = 1024
FLOAT16_MAX = float(np.finfo(np.float16).max)


class WeightsError(ValueError):
    """A run's output is incomplete, altered or does not fit the model; the message says how."""


@dataclass(frozen=True)
class Entry:
    """One weight tensor: where it is stored and what it must look like."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    piece: str
    key: str


def storage_dtype(name: str, array: np.ndarray) -> np.dtype:
    """float16 where every value fits (|x| <= 65504), float32 otherwise; NaN/inf is refused."""
    if not np.all(np.isfinite(array)):
        raise WeightsError(f"weight {name} has NaN or inf values: the training diverged")
    if array.size and float(np.max(np.abs(array))) > FLOAT16_MAX:
        return np.dtype(np.float32)
    return np.dtype(np.float16)


def to_storage(names: list[str], weights: list[np.ndarray]) -> list[np.ndarray]:
    """The weights as they will be stored (and as the float32 model will see them, widened)."""
    arrays = [np.asarray(w) for w in weights]
    return [a.astype(storage_dtype(n, a)) for n, a in zip(names, arrays, strict=True)]


def write_pieces(
    out: Path, names: list[str], stored: list[np.ndarray], limit: int = PIECE_LIMIT
) -> tuple[list[Entry], list[dict[str, Any]]]:
    """Pack the stored weights in order into ``weights-NN.npz`` files of at most ``limit`` bytes."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, array in enumerate(stored):
        need = array.nbytes + _PER_ARRAY_OVERHEAD
        if need > limit:
            raise WeightsError(f"weight {names[i]} alone ({array.nbytes} bytes) exceeds a piece")
        if groups[-1] and size + need > limit:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += need
    entries: list[Entry] = []
    files: list[dict[str, Any]] = []
    for number, group in enumerate(groups):
        piece = f"weights-{number:02d}.npz"
        arrays = {f"w{i:04d}": stored[i] for i in group}
        np.savez(out / piece, **arrays)  # uncompressed: its size is known in advance
        bytes_ = (out / piece).stat().st_size
        if bytes_ > limit:
            raise WeightsError(f"{piece} came out at {bytes_} bytes, over the {limit} limit")
        files.append({"file": piece, "bytes": bytes_, "sha256": sha256_file(out / piece)})
        entries += [
            Entry(names[i], tuple(stored[i].shape), str(stored[i].dtype), piece, f"w{i:04d}")
            for i in group
        ]
    return entries, files


def write_reference(
    out: Path, images: np.ndarray, labels: np.ndarray, names: list[str], probs: np.ndarray
) -> dict[str, Any]:
    np.savez_compressed(
        out / REFERENCE,
        images=images.astype(np.uint8),
        labels=labels.astype(np.int64),
        names=np.array(names, dtype=str),
        probs=probs.astype(np.float32),
    )
    path = out / REFERENCE
    return {"file": REFERENCE, "count": len(images), "sha256": sha256_file(path)}


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    """Written last and atomically: a folder with a manifest is a complete one."""
    path = out / MANIFEST
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **manifest}, indent=1) + "\n")
    tmp.replace(path)
    return path


# --- reading back -----------------------------------------------------------------------------

_REQUIRED = ("keras_version", "stem", "input_size", "class_names", "weights", "pieces", "reference")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise WeightsError(f"{folder}: not a folder (expected a GPU run's output)")
    if not path.exists():
        raise WeightsError(
            f"{path}: no manifest: the run did not finish, or this is no run's output"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a manifest of format {FORMAT!r}")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise WeightsError(f"{path}: missing field(s) {', '.join(missing)}")
    return manifest


def entries(manifest: dict[str, Any]) -> list[Entry]:
    try:
        return [
            Entry(e["name"], tuple(e["shape"]), e["dtype"], e["piece"], e["key"])
            for e in manifest["weights"]
        ]
    except (KeyError, TypeError) as exc:
        raise WeightsError(f"{MANIFEST}: malformed weights list ({exc!r})") from None


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every piece and the reference file present, each with the sha256 the manifest records."""
    files = [*manifest["pieces"], manifest["reference"]]
    named = {e.piece for e in entries(manifest)}
    listed = {f["file"] for f in manifest["pieces"]}
    if named - listed:
        raise WeightsError(f"{MANIFEST}: weights name pieces it does not list: {named - listed}")
    for record in files:
        path = folder / record["file"]
        if not path.exists():
            raise WeightsError(f"{path}: missing (the manifest lists it): copy the whole folder")
        actual = sha256_file(path)
        if actual != record["sha256"]:
            raise WeightsError(
                f"{path}: checksum error: sha256 {actual} does not match {record['sha256']} in "
                f"{MANIFEST}: the file is corrupt or altered"
            )


def read_weights(folder: Path, manifest: dict[str, Any]) -> list[np.ndarray]:
    """The weights in order, widened to float32, each checked against its manifest entry."""
    out: list[np.ndarray] = []
    open_pieces: dict[str, Any] = {}
    try:
        for entry in entries(manifest):
            if entry.piece not in open_pieces:
                open_pieces[entry.piece] = np.load(folder / entry.piece, allow_pickle=False)
            piece = open_pieces[entry.piece]
            if entry.key not in piece:
                raise WeightsError(f"{entry.piece}: has no array {entry.key} ({entry.name})")
            array = piece[entry.key]
            if tuple(array.shape) != entry.shape or str(array.dtype) != entry.dtype:
                raise WeightsError(
                    f"{entry.piece}:{entry.key} ({entry.name}) is {array.dtype}{list(array.shape)}"
                    f", the manifest says {entry.dtype}{list(entry.shape)}"
                )
            out.append(array.astype(np.float32))
    finally:
        for piece in open_pieces.values():
            piece.close()
    return out


def _short(path: str) -> str:
    """'conv1_conv/kernel' out of any longer path: the layer and the variable."""
    return "/".join(path.split("/")[-2:])


def check_layout(net, entries: list[Entry], stem: str) -> None:
    """The stored weights must be the model's: as many, each with the same name and shape."""
    weights = net.weights
    if len(weights) != len(entries):
        raise WeightsError(
            f"shape mismatch: {len(entries)} weights stored, build(stem={stem!r}) makes "
            f"{len(weights)}"
        )
    for i, (weight, entry) in enumerate(zip(weights, entries, strict=True)):
        if tuple(weight.shape) != entry.shape:
            raise WeightsError(
                f"shape mismatch: weight {i} ({entry.name}) is {list(entry.shape)} as stored, "
                f"the model's {weight.path} is {list(weight.shape)}"
            )
        if _short(weight.path) != _short(entry.name):
            raise WeightsError(
                f"weight order differs: weight {i} is {entry.name} as stored, "
                f"{weight.path} in the model"
            )


@dataclass
class Reference:
    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    probs: np.ndarray


def read_reference(folder: Path, manifest: dict[str, Any]) -> Reference:
    with np.load(folder / manifest["reference"]["file"], allow_pickle=False) as data:
        return Reference(
            data["images"], data["labels"], [str(n) for n in data["names"]], data["probs"]
        )
