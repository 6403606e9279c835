"""The pipeline benchmark's plots: latency CDFs per step, achieved against offered img/s, and
consumer lag over time (PNG, matplotlib without a display)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.ops.pipeline_bench import Step


def pipeline_plots(steps: list[Step], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "pipeline-latency-cdf.png", out / "pipeline-throughput.png",
             out / "pipeline-lag.png"]  # fmt: skip

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, what in zip(axes, ("stored", "labelled"), strict=True):
        for step in steps:
            values = sorted(getattr(step, f"latencies_{what}"))
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot([v * 1000 for v in values], ys, label=f"{step.offered:g} img/s")
        ax.set_xscale("log")
        ax.set_xlabel(f"camera to {what} (ms, log scale)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("share of images")
    axes[1].legend(title="offered")
    fig.suptitle("Latency, every image of each step")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    offered = [s.offered for s in steps]
    ax.plot(offered, offered, "k--", label="offered", alpha=0.5)
    ax.plot(offered, [s.stored_per_s for s in steps], "o-", label="stored")
    ax.plot(offered, [s.labelled_per_s for s in steps], "s-", label="labelled")
    ax.set_xlabel("offered img/s")
    ax.set_ylabel("achieved img/s (within the step)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    for step in steps:
        if step.lag_over_time:
            xs, ys = zip(*step.lag_over_time, strict=True)
            ax.plot(xs, ys, label=f"{step.offered:g} img/s")
    ax.set_xlabel("seconds since the first step began")
    ax.set_ylabel("records not yet committed (both groups)")
    ax.legend(title="step")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths
