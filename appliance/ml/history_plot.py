"""A training run's curve as a PNG: accuracy (training batches and the test probe) and loss per
epoch, and the learning rate where each epoch ended. Written into the checkpoint folder after every
epoch (``X.ckpt/history.png``), and by ``appliance model history`` for any run or artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.ml.checkpoints import STATE_FILE
from appliance.model import artifact_paths

PLOT_NAME = "history.png"
ARTIFACT_PLOTS = Path("build/history")  # not beside a shipped artifact: that is an image's folder


class HistoryError(ValueError):
    """No training history where one was asked for."""


def read_history(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a checkpoint folder (``X.ckpt/``, its state.json)
    or an artifact (``X.keras``, ``X.npz`` or ``X.onnx``, its ``X.json``)."""
    source = path / STATE_FILE if path.is_dir() else artifact_paths(path)[1]
    if not source.exists():
        raise HistoryError(
            f"{path}: no {source}: expected a checkpoint folder (X.ckpt/ with {STATE_FILE}) or "
            "an artifact with its X.json"
        )
    try:
        data = json.loads(source.read_text())
    except json.JSONDecodeError as exc:
        raise HistoryError(f"{source}: not JSON ({exc})") from None
    history = data.get("history") or (data.get("extra") or {}).get("history")
    if not history:
        raise HistoryError(
            f"{source}: no training history (an untrained model, or a run whose first epoch "
            "has not finished)"
        )
    return history


def default_plot_path(path: Path) -> Path:
    """``X.ckpt/history.png`` for a checkpoint folder; ``build/history/<folder>-<X>.png`` for an
    artifact ``<folder>/X.keras``."""
    if path.is_dir():
        return path / PLOT_NAME
    return ARTIFACT_PLOTS / f"{path.resolve().parent.name}-{path.stem}.png"


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Write the curve of ``history`` (records as ``appliance train`` keeps them) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def series(key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
        pairs = [(int(h["epoch"]), scale * float(h[key])) for h in history if key in h]
        return [e for e, _ in pairs], [v for _, v in pairs]

    fig, (acc, loss, lr) = plt.subplots(3, 1, sharex=True, figsize=(7, 7), dpi=100)
    acc.plot(*series("accuracy", 100), marker="o", label="training batches (augmented)")
    if any("probe_accuracy" in h for h in history):
        acc.plot(*series("probe_accuracy", 100), marker="o", label="probe (test images)")
    if any("val_accuracy" in h for h in history):
        acc.plot(*series("val_accuracy", 100), marker="o", label="held-out training images")
    acc.set_ylabel("top-1 (%)")
    acc.legend(fontsize=8)
    acc.grid(alpha=0.3)
    loss.plot(*series("loss"), marker="o", color="tab:red")
    loss.set_ylabel("training loss")
    loss.grid(alpha=0.3)
    lr.plot(*series("lr"), marker="o", color="tab:green")
    lr.set_ylabel("learning rate\nat epoch end")
    lr.set_xlabel("epoch")
    lr.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    lr.grid(alpha=0.3)
    hours = sum(float(h.get("seconds", 0.0)) for h in history) / 3600
    fig.suptitle(f"{title}\n{len(history)} epochs, {hours:.1f} h of training", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"tmp-{path.name}")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)  # a reader never sees half a file
    return path
