"""An artifact small enough for git: the weights alone, float16 where they fit, in one ``.npz``.

``X.npz`` beside ``X.json`` is an artifact just as ``X.keras`` is: :func:`appliance.model.load`
rebuilds the network with :func:`appliance.model.build` (stem, input size and classes from the
metadata), checks every stored weight's name and shape against it, and widens the weights to
float32, so the model computes exactly as the float32 one with rounded weights would. The ResNet50
has 23.6 M parameters: 94 MB as a float32 ``.keras`` file, 47 MB here, so the trained model can
ship in the repository (the ml-server image's ``model/``) and be used by default everywhere.

Only numpy here, as in :mod:`appliance.ml.pieces`, whose storage rules (float16 where every value
fits, float32 otherwise, NaN refused) and layout check this reuses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from appliance.ml import pieces

SUFFIX = ".npz"
FORMAT = "appliance-packed-weights/1"


def save(net, path: Path) -> None:
    """The model's weights, in ``net.weights`` order with their names, to ``path`` (atomic)."""
    names = [w.path for w in net.weights]
    stored = pieces.to_storage(names, net.get_weights())
    arrays = {f"w{i:04d}": array for i, array in enumerate(stored)}
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:  # a file object: np.savez would append .npz to a name
        np.savez(fh, format=np.array(FORMAT), names=np.array(names, dtype=str), **arrays)
    os.replace(tmp, path)


def read(path: Path) -> tuple[list[pieces.Entry], list[np.ndarray]]:
    """The stored weights and what each claims to be, refusing a file of another format."""
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise pieces.WeightsError(f"{path}: not a packed weights file ({exc})") from None
    with data:
        if "format" not in data or str(data["format"]) != FORMAT:
            raise pieces.WeightsError(f"{path}: not a packed weights file of format {FORMAT!r}")
        names = [str(name) for name in data["names"]]
        keys = [f"w{i:04d}" for i in range(len(names))]
        missing = [key for key in keys if key not in data]
        if missing:
            raise pieces.WeightsError(f"{path}: {len(missing)} weights missing ({missing[0]}, …)")
        arrays = [data[key] for key in keys]
    entries = [
        pieces.Entry(name, tuple(a.shape), str(a.dtype), path.name, key)
        for name, a, key in zip(names, arrays, keys, strict=True)
    ]
    return entries, arrays


def load_into(net, path: Path, stem: str) -> None:
    """Set ``net``'s weights from ``path`` after checking they are its own, widened to float32."""
    entries, arrays = read(path)
    pieces.check_layout(net, entries, stem)
    net.set_weights([array.astype(np.float32) for array in arrays])
