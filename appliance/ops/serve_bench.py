"""``appliance bench serve``: what the micro-batching server buys, in images per second.

One run measures, on this machine:

1. the model called in-process at batch B (the server's own compiled call, TensorFlow's default
   threads: the ceiling);
2. the server over HTTP (Gunicorn started here on loopback, max batch B) with C clients each
   sending single images to ``/predict``;
3. the same server in ``INFERENCE_MODE=naive`` (Keras ``predict()`` per request), same clients;

and prints each figure with the ratios server/in-process and server/naive. Phases 1 and 2 take
turns in short rounds (the server idles while the model runs in-process and the reverse), so that
load from other processes on the machine weighs on both figures alike.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.model import GRAPH_SUFFIX
from appliance.ops.bench_loads import Clients, InProcess, Load
from appliance.server.backends import BACKENDS
from appliance.server.process import ServerProcess, default_workers

log = logging.getLogger(__name__)

# The server over HTTP against the same model in-process (the pipeline-performance issue's goal).
TARGET_VS_IN_PROCESS = 0.85
TARGET_VS_NAIVE = 20.0
# After a load is switched on, time for the pipeline to fill before counting.
RAMP_S = 0.5
# A window is held open until an image finishes in it, up to this much longer: on a starved
# machine one call can outlast a short window, and a rate of 0 would be a wrong figure.
STALL_S = 300.0


def add_arguments(sub: Any) -> None:
    serve = sub.add_parser("serve", help="in-process model vs the server vs a naive server")
    add = serve.add_argument
    add(
        "--model",
        help="model artifact (or a graph artifact, X.onnx, with --backend openvino); default: the "
        "shipped trained model (a fresh one where it is absent)",
    )
    add("--batch", type=int, default=64, help="batch size in-process and server max batch")
    # 4 x batch: two full batches in flight per worker with 2 workers (the 2-core default).
    add("--clients", type=int, default=256, help="concurrent HTTP clients, one request each")
    add("--seconds", type=float, default=10.0, help="measured seconds per phase")
    add("--rounds", type=int, default=3, help="turns taken by the in-process and server phases")
    add("--warmup", type=float, default=2.0, help="unmeasured seconds before measuring")
    add("--workers", type=int, help="Gunicorn workers (default: the server's, one per core)")
    add(
        "--backend",
        choices=BACKENDS,
        default="tensorflow",
        help="what runs the model in-process and in the server (the naive phase: Keras)",
    )
    add("--naive-workers", type=int, help="naive server's workers (default: the same)")
    add("--threads", type=int, help="threads per worker (default: max(clients, batch))")
    add("--max-batch-wait-ms", type=float, default=5.0, help="server batch wait")
    add("--startup-timeout", type=float, default=180.0, help="seconds for a server to be ready")
    add("--skip-naive", action="store_true", help="leave out the naive server phase")


@dataclass
class Result:
    images_per_s: float
    errors: int = 0
    mean_batch: float | None = None


def run(args: argparse.Namespace) -> int:
    if min(args.batch, args.clients, args.rounds) < 1 or args.seconds <= 0:
        print(
            "bench serve: --batch, --clients, --rounds, --seconds must be positive", file=sys.stderr
        )
        return 2
    threads = args.threads or max(args.clients, args.batch)
    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_path = args.model or _default_model(tmp)
        bodies = _request_bodies(model_path)
        graph = model_path.endswith(GRAPH_SUFFIX)
        if graph and not args.skip_naive:
            print("bench serve: no naive phase for a graph artifact (it is Keras's predict())")
        in_process, server = _compare(model_path, args, bodies, tmp, threads, workers)
        naive = None
        if not (args.skip_naive or graph):
            naive_workers = args.naive_workers or workers
            with _Server("naive", model_path, args, tmp, threads, naive_workers) as naive_server:
                naive = naive_server.measure(bodies)
            _report(
                "naive server",
                f"Keras predict() per request, same clients, {naive_workers} workers",
                naive,
            )
    vs_in_process = server.images_per_s / in_process.images_per_s
    print(
        f"server / in-process: {vs_in_process:.2f} (target >= {TARGET_VS_IN_PROCESS:.2f}: "
        f"{'met' if vs_in_process >= TARGET_VS_IN_PROCESS else 'NOT met'})"
    )
    if naive is not None and naive.images_per_s > 0:
        vs_naive = server.images_per_s / naive.images_per_s
        print(
            f"server / naive: {vs_naive:.1f}x (target >= {TARGET_VS_NAIVE:.0f}x: "
            f"{'met' if vs_naive >= TARGET_VS_NAIVE else 'NOT met'})"
        )
    return 1 if server.errors or (naive is not None and naive.errors) else 0


def _compare(
    model_path: str,
    args: argparse.Namespace,
    bodies: list[bytes],
    tmp: Path,
    threads: int,
    workers: int,
) -> tuple[Result, Result]:
    """Phases 1 and 2, taking turns."""
    with _Server("server", model_path, args, tmp, threads, workers) as server:
        model = InProcess(model_path, args.batch, args.backend)
        clients = Clients(server.port, bodies, args.clients)
        loads: dict[str, Load] = {"in-process": model, "server": clients}
        try:
            for load in loads.values():
                load.start()
                load.run_for(args.warmup)
            rates = _take_turns(loads, args.seconds, args.rounds)
            if clients.first_error:
                print(f"bench: server: first client error: {clients.first_error}", file=sys.stderr)
            mean_batch = server.mean_batch()
        finally:
            for load in loads.values():
                load.finish()
            clients.join(10.0)
    in_process = Result(rates["in-process"])
    _report("in-process", f"batch {args.batch}, {args.backend} model call", in_process)
    result = Result(rates["server"], errors=clients.errors(), mean_batch=mean_batch)
    setup = f"{workers} workers x {threads} threads, max batch {args.batch}"
    _report("server", f"HTTP /predict, {args.clients} clients, {setup}", result)
    return in_process, result


def _take_turns(loads: dict[str, Load], seconds: float, rounds: int) -> dict[str, float]:
    """Run each load alone for seconds/rounds, round after round; images/s of each."""
    from tqdm import tqdm

    images = dict.fromkeys(loads, 0)
    elapsed = dict.fromkeys(loads, 0.0)
    window = seconds / rounds
    total = round(seconds * len(loads))
    with tqdm(total=total, desc="bench", unit="s", file=sys.stderr, leave=False) as bar:
        for round_index in range(rounds):
            for name, load in loads.items():
                load.go.set()
                time.sleep(RAMP_S)
                start_count, start = load.done(), time.perf_counter()
                while (now := time.perf_counter()) - start < window or (load.done() == start_count):
                    if now - start > window + STALL_S:
                        raise RuntimeError(
                            f"{name}: no image finished in {window + STALL_S:.0f}s; the machine "
                            "is too busy to measure this"
                        )
                    time.sleep(max(0.05, min(0.5, window - (now - start))))
                    rate = (load.done() - start_count) / (time.perf_counter() - start)
                    bar.set_description_str(f"{name} {round_index + 1}/{rounds}")
                    bar.set_postfix_str(f"{rate:.0f} img/s")
                    bar.n = min(total, round(sum(elapsed.values()) + time.perf_counter() - start))
                    bar.refresh()
                images[name] += load.done() - start_count
                elapsed[name] += time.perf_counter() - start
                if len(loads) > 1:
                    load.pause()
    return {name: images[name] / elapsed[name] for name in loads}


def _report(name: str, how: str, result: Result) -> None:
    extra = f", mean batch {result.mean_batch:.1f}" if result.mean_batch else ""
    errors = f", {result.errors} errors" if result.errors else ""
    print(f"{name}: {result.images_per_s:.1f} img/s ({how}{extra}{errors})", flush=True)


def _default_model(tmp: Path) -> str:
    """The shipped model; outside a source checkout an untrained one (the same compute)."""
    from appliance.model import create_untrained, shipped_path

    if shipped_path().exists():
        return str(shipped_path())
    path = tmp / "model" / "resnet50-untrained"
    print("bench: no --model given, creating an untrained ResNet50 ...", file=sys.stderr)
    create_untrained(path)
    return str(path)


# --- the server under test --------------------------------------------------------------------


def _request_bodies(model_path: str, count: int = 32) -> list[bytes]:
    """Pre-encoded /predict bodies (PNG at the model's input size), so clients only send."""
    from PIL import Image

    from appliance.model import read_metadata

    size = read_metadata(model_path).input_size
    rng = np.random.default_rng(1)
    bodies = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(buffer, "PNG")
        image = base64.b64encode(buffer.getvalue()).decode("ascii")
        bodies.append(json.dumps({"image": image}).encode())
    return bodies


class _Server(ServerProcess):
    """Gunicorn as ``appliance serve`` runs it, on a free loopback port, for one phase."""

    def __init__(
        self,
        name: str,
        model_path: str,
        args: argparse.Namespace,
        tmp: Path,
        threads: int,
        workers: int,
    ) -> None:
        self.name, self.args = name, args
        env = {
            "SERVER_THREADS": str(threads),
            "MAX_BATCH_SIZE": str(args.batch),
            "MAX_BATCH_WAIT_MS": str(args.max_batch_wait_ms),
            "INFERENCE_MODE": "naive" if name == "naive" else "batched",
            "BACKEND": args.backend,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"prometheus-{name}"),
            "LOG_LEVEL": "warning",
        }
        super().__init__(model_path, tmp / f"{name}.log", workers=workers, env=env)

    def __enter__(self) -> _Server:
        print(f"bench: starting Gunicorn ({self.name}) ...", file=sys.stderr, flush=True)
        self.start(timeout=self.args.startup_timeout)
        return self

    def mean_batch(self) -> float | None:
        total = self.metric("appliance_model_batch_size_sum")
        count = self.metric("appliance_model_batch_size_count")
        return total / count if total is not None and count else None

    def measure(self, bodies: list[bytes]) -> Result:
        """Phase 3: the clients alone against this server."""
        clients = Clients(self.port, bodies, self.args.clients)
        clients.start()
        try:
            # No pause after the warm-up: a naive server's queue would take long to drain.
            clients.go.set()
            time.sleep(self.args.warmup)
            rate = _take_turns({self.name: clients}, self.args.seconds, 1)[self.name]
        finally:
            clients.finish()
        if clients.first_error:
            print(f"bench: {self.name}: first client error: {clients.first_error}", file=sys.stderr)
        return Result(rate, errors=clients.errors(), mean_batch=self.mean_batch())
