"""What `appliance bench pipeline` prints and writes: the table, each process's CPU and memory,
the JSON file and the plots; and the raw steps (every latency) that a run inside the container
stack hands back to the host, which has matplotlib."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance.ops import proc_stats
from appliance.ops.pipeline_bench import Latency, Step

RAW_NAME = "pipeline-raw.json"


def table(steps: list[Step]) -> list[str]:
    lines = [
        f"{'offered':>8}{'stored/s':>10}{'labelled/s':>11}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"{'max ms':>8}{'lag':>7}{'drain s':>9}  (latency: camera to label)"
    ]
    for s in steps:
        t = s.to_labelled
        lag = sum(s.lag_at_end.values())
        lines.append(
            f"{s.offered:>8.0f}{s.stored_per_s:>10.1f}{s.labelled_per_s:>11.1f}"
            f"{t.p50 * 1000:>8.0f}{t.p95 * 1000:>8.0f}{t.p99 * 1000:>8.0f}{t.max * 1000:>8.0f}"
            f"{lag:>7}{s.drain_s:>9.1f}{'' if s.follows else '  <- stopped following'}"
        )
    return lines


def process_lines(steps: list[Step]) -> list[str]:
    lines = ["CPU (cores busy) and RSS (MiB) per process, each step:"]
    for s in steps:
        parts = [f"{n} {u.cores:.2f}/{u.rss_mib:.0f}" for n, u in s.processes.items()]
        lines.append(f"  {s.offered:>5.0f} img/s: " + ", ".join(parts))
    return lines


def write_json(path: Path, steps: list[Step], extra: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for s in steps:
        row = asdict(s)
        row.pop("latencies_stored")
        row.pop("latencies_labelled")
        row["follows"] = s.follows
        out.append(row)
    path.write_text(json.dumps({**extra, "steps": out}, indent=2) + "\n")


def write_raw(path: Path, steps: list[Step]) -> None:
    """Every field of every step, the latencies included: what the plots need."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(s) for s in steps]) + "\n")


def read_raw(path: Path) -> list[Step]:
    steps = []
    for row in json.loads(path.read_text()):
        row["to_stored"] = Latency(**row["to_stored"])
        row["to_labelled"] = Latency(**row["to_labelled"])
        row["processes"] = {n: proc_stats.Usage(**u) for n, u in row["processes"].items()}
        row["lag_over_time"] = [tuple(pair) for pair in row["lag_over_time"]]
        steps.append(Step(**row))
    return steps


def report(steps: list[Step], out: Path, extra: dict[str, Any]) -> float:
    """Print the table and write the JSON and plots into ``out``; returns the carried rate."""
    from appliance.ops import bench_plots

    print("\n".join(table(steps)))
    print("\n".join(process_lines(steps)))
    followed = [s.offered for s in steps if s.follows]
    carried = max(followed) if followed else 0.0
    print(f"carried: {carried:g} img/s (the highest step the labelled rate followed)")
    write_json(out / "pipeline.json", steps, {**extra, "carried": carried})
    plots = bench_plots.pipeline_plots(steps, out)
    print(f"wrote {out / 'pipeline.json'} and {', '.join(str(p) for p in plots)}")
    return carried
