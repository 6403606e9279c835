"""The programs fetching, building and running the services need, found on PATH with the package
to install when missing, and the one-time fetch and build steps run with a cache lock, a log and
progress."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from appliance.ops.services.config import (
    FERRETDB_VERSION,
    PROGRESS_INTERVAL_S,
    MissingToolError,
    ServiceError,
)
from appliance.ops.services.health import log_tail


@dataclass(frozen=True)
class Tool:
    command: str
    debian_package: str
    purpose: str


JAVA = Tool("java", "default-jre-headless", "to run Kafka")
MAVEN = Tool("mvn", "maven", "to fetch the Kafka jars from Maven Central (once)")
GO = Tool("go", "golang", f"to build FerretDB {FERRETDB_VERSION} (once), as no mongod is on PATH")


def find_tool(tool: Tool, path: str | None = None) -> str:
    found = shutil.which(tool.command, path=path)
    if found is None:
        raise MissingToolError(
            f"`{tool.command}` not found on PATH; it is needed {tool.purpose}: "
            f"install it with `apt-get install {tool.debian_package}`"
        )
    return found


@contextlib.contextmanager
def _cache_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """Serialise fetches and builds: a test run and `make services` may start at the same time."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_step(
    what: str,
    command: list[str],
    *,
    cwd: Path,
    log_path: Path,
    out: TextIO,
    env: Mapping[str, str] | None = None,
    note: str = "",
) -> float:
    """Run one long step with its output in a log, printing elapsed time so it never looks hung."""
    print(f"{what} ({note + '; ' if note else ''}log: {log_path}) ...", file=out, flush=True)
    start = time.monotonic()
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            returncode = _wait_with_progress(proc, what, start, out)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    elapsed = time.monotonic() - start
    if returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {returncode}) after {elapsed:.0f}s; "
            f"last lines of {log_path}:\n{log_tail(log_path)}"
        )
    print(f"{what}: done in {elapsed:.1f}s", file=out, flush=True)
    return elapsed


def _wait_with_progress(proc: subprocess.Popen[bytes], what: str, start: float, out: TextIO) -> int:
    next_report = PROGRESS_INTERVAL_S
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - start
            if elapsed >= next_report:
                print(f"  ... {what}: {elapsed:.0f}s so far", file=out, flush=True)
                next_report += PROGRESS_INTERVAL_S
