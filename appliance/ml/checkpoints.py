"""A training run's checkpoints: ``X.ckpt/`` beside the artifact ``X.keras``.

``state.json`` says how far the run got (``epoch`` epochs done and ``step`` steps into the next)
and names the one checkpoint file (model and optimizer) that holds exactly that. Every write
replaces a file atomically, so a kill at any moment leaves a state that names a complete file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from appliance import model
from appliance.ml.recipe import Recipe, TrainingError

CHECKPOINT_SUFFIX = ".ckpt"
STATE_FILE = "state.json"


def checkpoint_dir(out: Path) -> Path:
    """``build/model/resnet50.keras`` -> ``build/model/resnet50.ckpt/``."""
    return out.with_name(model.artifact_paths(out)[0].stem + CHECKPOINT_SUFFIX)


def read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrainingError(f"{path}: not JSON ({exc}); pass --fresh to start over") from None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, folder / STATE_FILE)  # atomic: a crash leaves the old state or the new


def recipe_differences(state: dict[str, Any], recipe: Recipe) -> list[str]:
    """The recipe fields in which a checkpoint's run differs from ``recipe``.

    A field the checkpoint does not record (it predates the field) counts as its default.
    """
    saved = {f.name: f.default for f in fields(Recipe)} | state.get("recipe", {})
    return sorted(k for k, v in asdict(recipe).items() if saved.get(k) != v)


def checkpoint_name(epoch: int, step: int) -> str:
    """``epoch-0003.keras`` after 3 epochs; ``epoch-0003-step-0120.keras`` 120 steps further."""
    return f"epoch-{epoch:04d}.keras" if step == 0 else f"epoch-{epoch:04d}-step-{step:04d}.keras"


def save_checkpoint(net, folder: Path, state: dict[str, Any]) -> None:
    """Model + optimizer state to a new file, then the state naming it, then drop the old file."""
    name = checkpoint_name(int(state["epoch"]), int(state.get("step", 0)))
    tmp = folder / f"tmp-{name}"
    net.save(tmp)  # .keras includes the optimizer's variables (momentum, iterations)
    os.replace(tmp, folder / name)
    previous = (read_state(folder) or {}).get("checkpoint")
    write_state(folder, {**state, "checkpoint": name})
    if previous and previous != name:
        (folder / previous).unlink(missing_ok=True)
