"""Gunicorn settings for the inference server, each from an environment variable with a default.

Gunicorn loads this file by path (``gunicorn -c .../gunicorn_conf.py``) in the master only. It must
not import TensorFlow or prometheus_client at module level: the model loads in each worker after
the fork, and prometheus_client picks its multiprocess storage when first imported, which has to be
after ``PROMETHEUS_MULTIPROC_DIR`` is set in :func:`on_starting`.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from appliance.server.process import cores, default_workers

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_OWNED_DIR_ENV = "APPLIANCE_OWNS_PROMETHEUS_DIR"


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None
    if value <= 0:
        raise SystemExit(f"{name} must be positive, got {value}")
    return value


bind = [os.environ.get("SERVER_BIND", "").strip() or "0.0.0.0:8000"]
# Threads, not processes, carry the concurrency: requests of one worker must meet in its batcher.
worker_class = "gthread"
# One worker per core (at most 4: each holds a model), each TensorFlow limited to its share of
# the cores (MODEL_THREADS). Measured on 2 cores at batch 64: one single-threaded model call per
# core gives ~1.25x the images/s of one call using both cores, and two workers also run their
# Python request handling in parallel instead of under one GIL.
workers = _int("SERVER_WORKERS", default_workers())
if not os.environ.get("MODEL_THREADS", "").strip():
    os.environ["MODEL_THREADS"] = str(max(1, cores() // workers))
# At least the max batch size, so that many single-image requests can wait in one batch at once.
threads = _int("SERVER_THREADS", 64)
# Seconds a worker may stay silent; model loading runs in a thread, so it does not count here.
timeout = _int("SERVER_TIMEOUT", 120)
graceful_timeout = _int("SERVER_GRACEFUL_TIMEOUT", 30)
keepalive = _int("SERVER_KEEPALIVE", 75)
backlog = _int("SERVER_BACKLOG", 2048)
# Each worker loads its own model after the fork: never in the master.
preload_app = False
# Access lines cost CPU on every request; set SERVER_ACCESS_LOG=1 to get them on stdout.
accesslog = "-" if os.environ.get("SERVER_ACCESS_LOG", "") in ("1", "true", "yes") else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = "appliance-ml-server"


def on_starting(server) -> None:
    """Give the workers a fresh directory for their metric files (stale ones would add up)."""
    path = os.environ.get(MULTIPROC_ENV, "").strip()
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix="appliance-prometheus-")
        os.environ[MULTIPROC_ENV] = path
        os.environ[_OWNED_DIR_ENV] = path
    server.log.info("Prometheus multiprocess metrics in %s", path)


def child_exit(server, worker) -> None:
    """A dead worker's live gauges must stop counting; its counters stay in the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    owned = os.environ.get(_OWNED_DIR_ENV)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)
