"""Host processes the local providers start (QEMU, vde_switch): alive, gone, what they use."""

from __future__ import annotations

import os
import time
from pathlib import Path


def usage(pid: int) -> tuple[int, float]:
    """A QEMU process's resident memory (MiB: what the guest has touched) and CPU seconds."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0.0
    # A zombie (or a kernel thread) has no VmRSS line: it holds no memory.
    rss_kib = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
    )
    # utime and stime: fields 14 and 15 of stat, 11 and 12 after the command's closing ")".
    ticks = int(fields[11]) + int(fields[12])
    return rss_kib // 1024, ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child, not reaped) is not a running VM.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True
