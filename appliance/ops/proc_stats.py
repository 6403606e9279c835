"""What a process and its children use: CPU seconds and resident memory, from /proc.

The benchmarks and the soak read it for the processes they start: a server counts with its workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from appliance.cloud.processes import usage as one_process


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    cpu_s: float  # user + system, the process and its descendants
    rss_mib: int


@dataclass
class Usage:
    cores: float  # CPU seconds per second between two samples
    rss_mib: int  # at the second sample


def descendants(pid: int) -> list[int]:
    try:
        children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [grandchild for child in children for grandchild in descendants(child)]


def tree(pid: int, with_children: bool = True) -> Sample:
    rss, cpu = 0, 0.0
    for task in (pid, *(descendants(pid) if with_children else ())):
        task_rss, task_cpu = one_process(task)
        rss, cpu = rss + task_rss, cpu + task_cpu
    return Sample(time.monotonic(), cpu, rss)


def sample(pids: dict[str, int], alone: frozenset[int] = frozenset()) -> dict[str, Sample]:
    """Each named process with its children, but those in ``alone`` (e.g. the caller itself,
    whose children are counted under their own names)."""
    return {name: tree(pid, pid not in alone) for name, pid in pids.items()}


def usage(before: dict[str, Sample], after: dict[str, Sample]) -> dict[str, Usage]:
    out = {}
    for name, end in after.items():
        start = before[name]
        seconds = max(end.at - start.at, 1e-9)
        out[name] = Usage(max(0.0, end.cpu_s - start.cpu_s) / seconds, end.rss_mib)
    return out
