"""`appliance bench pipeline`: how many images per second the whole pipeline carries on this
machine, and how long a camera's shot takes to be stored and labelled.

Open loop: each step's send times are fixed in advance (rate R: one image every 1/R s, round the
cameras), and each message's `timestamp` is its *scheduled* time, so a sender that falls behind
shows up as latency instead of hiding it. Nothing waits for the pipeline. Steps rise (10, 20, 40,
... img/s) until the labelled rate stops following the offered one. For each step: offered and
achieved img/s (stored, labelled), latency from `timestamp` to `stored_at` and to `labelled_at`
over every document of the step (p50, p95, p99, max, read from MongoDB), consumer lag at the end
of the step, and each process's CPU and memory. Output: a table, a JSON file and plots.

By default everything runs here: the local services (`appliance services`), the inference server
and both consumers, on topics and a collection of the run's own. With ``--containers`` the same
steps run against the container stack (`make up`): see `appliance.ops.container_bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from appliance import datasets
from appliance.config import Settings
from appliance.contract import encode_image_message
from appliance.ops import proc_stats
from appliance.ops.counts import measure

DEFAULT_RATES = "10,20,40,80,160"
# A step's labelled rate under this share of its offered rate: the pipeline stopped following.
FOLLOWS = 0.9
QUANTILES = (0.50, 0.95, 0.99)


@dataclass
class Latency:
    p50: float
    p95: float
    p99: float
    max: float
    samples: int

    @classmethod
    def of(cls, values: list[float]) -> Latency:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"), float("nan"), 0)
        ordered = sorted(values)
        pick = [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in QUANTILES]
        return cls(*pick, ordered[-1], len(ordered))


@dataclass
class Step:
    offered: float  # img/s scheduled
    seconds: float
    sent: int
    send_late_s: float  # how far the sender fell behind its schedule, at most
    stored_per_s: float  # this step's documents stored within the step, per second
    labelled_per_s: float
    to_stored: Latency
    to_labelled: Latency
    unlabelled: int  # the step's images not labelled when the drain timed out
    lag_at_end: dict[str, int]
    drain_s: float  # after the step, until all its images were labelled
    processes: dict[str, proc_stats.Usage] = field(default_factory=dict)
    # (seconds since the run began, total lag) every sample, for the lag plot
    lag_over_time: list[tuple[float, int]] = field(default_factory=list)
    latencies_stored: list[float] = field(default_factory=list, repr=False)
    latencies_labelled: list[float] = field(default_factory=list, repr=False)

    @property
    def follows(self) -> bool:
        return self.unlabelled == 0 and self.labelled_per_s >= FOLLOWS * self.offered


def add_arguments(sub: Any) -> None:
    bench = sub.add_parser("pipeline", help="the whole pipeline's throughput and latency, in steps")
    add = bench.add_argument
    add("--rates", default=DEFAULT_RATES, help=f"offered img/s per step (default {DEFAULT_RATES})")
    add("--step-seconds", type=float, default=30.0, help="seconds of load per step (default 30)")
    add("--cameras", type=int, default=4, help="camera names the images rotate through")
    add("--source", default="cifar10", help="image source, as for `appliance produce`")
    add("--model", type=Path, help="model artifact (default: the shipped trained model)")
    add("--drain-timeout", type=float, default=120.0, help="seconds a step may take to drain")
    add("--out", type=Path, default=Path("build/bench"), help="JSON and plots (build/bench)")
    add("--all-steps", action="store_true", help="run every step, even after saturation")
    from appliance.ops import container_bench  # it builds on this module

    container_bench.add_arguments(bench)


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--rates must be numbers, comma-separated, got {text!r}") from None
    if not rates or any(r <= 0 for r in rates) or rates != sorted(rates):
        raise ValueError(f"--rates must be positive and rising, got {text!r}")
    return rates


def send_open_loop(
    settings: Settings,
    samples: list[datasets.Sample],
    rate: float,
    seconds: float,
    cameras: int,
    progress: tqdm,
) -> tuple[int, float]:
    """Send at fixed times; returns (sent, how late the sender ran at most)."""
    from appliance.pipeline import kafkaio

    producer = kafkaio.make_producer(settings)
    names = [f"bench-{i:02d}" for i in range(cameras)]
    total = int(rate * seconds)
    start = time.time() + 0.2
    late = 0.0
    try:
        for i in range(total):
            due = start + i / rate
            now = time.time()
            if due > now:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            sample = samples[i % len(samples)]
            key, value = encode_image_message(
                sample.image, names[i % cameras], sample.label, timestamp=due
            )
            producer.send(settings.topic_images, key=key.encode(), value=value)
            progress.update(1)
    finally:
        producer.flush()
        producer.close()
    return total, late


def step_documents(collection: Any, began: float, ended: float) -> list[dict[str, Any]]:
    window = {"timestamp": {"$gte": began, "$lt": ended}}
    return list(collection.find(window, {"timestamp": 1, "stored_at": 1, "labelled_at": 1}))


def run_step(
    settings: Settings,
    collection: Any,
    samples: list[datasets.Sample],
    rate: float,
    args: argparse.Namespace,
    pids: dict[str, int],
    run_began: float,
    progress: tqdm,
) -> Step:
    before = proc_stats.sample(pids, frozenset({os.getpid()}))
    lags: list[tuple[float, int]] = []
    stop = threading.Event()

    def watch_lag() -> None:
        while not stop.wait(2.0):
            counts = measure(settings)
            lags.append((time.time() - run_began, sum(counts.lag.values())))

    watcher = threading.Thread(target=watch_lag, daemon=True)
    watcher.start()
    began = time.time()
    sent, late = send_open_loop(settings, samples, rate, args.step_seconds, args.cameras, progress)
    ended = began + 0.2 + sent / rate  # the last scheduled send
    time.sleep(max(0.0, ended - time.time()))
    lag_at_end = measure(settings).lag
    after = proc_stats.sample(pids, frozenset({os.getpid()}))
    docs = step_documents(collection, began, ended + 1)
    stored_in_step = sum(1 for d in docs if d.get("stored_at", float("inf")) <= ended)
    labelled_in_step = sum(1 for d in docs if d.get("labelled_at", float("inf")) <= ended)
    deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < deadline:
        done = collection.count_documents(
            {"timestamp": {"$gte": began, "$lt": ended + 1}, "labelled_at": {"$exists": True}}
        )
        if done >= sent:
            break
        time.sleep(0.5)
    drain = time.time() - ended
    stop.set()
    watcher.join(10)
    docs = step_documents(collection, began, ended + 1)
    to_stored = [d["stored_at"] - d["timestamp"] for d in docs if "stored_at" in d]
    to_labelled = [d["labelled_at"] - d["timestamp"] for d in docs if "labelled_at" in d]
    window = ended - began
    return Step(
        offered=rate,
        seconds=window,
        sent=sent,
        send_late_s=late,
        stored_per_s=stored_in_step / window,
        labelled_per_s=labelled_in_step / window,
        to_stored=Latency.of(to_stored),
        to_labelled=Latency.of(to_labelled),
        unlabelled=sent - len(to_labelled),
        lag_at_end=lag_at_end,
        drain_s=drain,
        processes=proc_stats.usage(before, after),
        lag_over_time=lags,
        latencies_stored=to_stored,
        latencies_labelled=to_labelled,
    )


def _delete_topics(settings: Settings) -> None:
    from kafka.admin import KafkaAdminClient

    with contextlib.suppress(Exception):  # a left-over topic is harmless; a failed bench is not
        admin = KafkaAdminClient(**settings.kafka_options())
        admin.delete_topics([settings.topic_images, settings.topic_predictions, settings.topic_dlq])
        admin.close()


def measure_steps(
    settings: Settings,
    collection: Any,
    samples: list[datasets.Sample],
    rates: list[float],
    args: argparse.Namespace,
    pids: dict[str, int],
) -> list[Step]:
    """A warm-up, then each step in turn until the pipeline stops following (or all of them)."""
    # A first small load: the consumers join their groups, the server traces its batch sizes.
    with tqdm(total=int(rates[0] * 5), unit="img", desc="warm-up", file=sys.stderr) as bar:
        send_open_loop(settings, samples, rates[0], 5, args.cameras, bar)
    time.sleep(5)
    run_began = time.time()
    steps: list[Step] = []
    total = int(sum(rates) * args.step_seconds)
    with tqdm(total=total, unit="img", desc="sent", file=sys.stderr) as bar:
        for rate in rates:
            bar.set_postfix_str(f"{rate:g} img/s")
            step = run_step(settings, collection, samples, rate, args, pids, run_began, bar)
            steps.append(step)
            if not step.follows and not args.all_steps:
                bar.total = bar.n
                break
    return steps


def run(args: argparse.Namespace) -> int:
    try:
        rates = parse_rates(args.rates)
        if args.step_seconds <= 0 or args.cameras < 1:
            raise ValueError("--step-seconds and --cameras must be positive")
        if args.containers or args.in_stack:
            from appliance.ops import container_bench

            return container_bench.run(args, rates)
        samples = datasets.load(args.source, "test")
    except (ValueError, datasets.DatasetError) as exc:
        print(f"bench pipeline: {exc}", file=sys.stderr)
        return 2
    return run_local(args, rates, samples)


def run_local(args: argparse.Namespace, rates: list[float], samples: list[datasets.Sample]) -> int:
    """The local services, a server and both consumers of the run's own, on its own names."""
    from pymongo import MongoClient

    from appliance.ops import local_pipeline as pipeline
    from appliance.ops import pipeline_report
    from appliance.ops import services as devservices
    from appliance.server.process import ServerProcess

    tag = uuid.uuid4().hex[:8]
    settings = Settings.from_env().own_names(tag, prefix="bench-")
    started_services = not devservices.is_running()
    endpoints = devservices.up()
    settings = endpoints.settings(settings)
    work = args.out / f"pipeline-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    model_path = pipeline.ensure_model(args.model or pipeline.DEFAULT_MODEL)
    server = ServerProcess(model_path, work / "server.log")
    settings = replace(settings, inference_url=server.url)
    procs = []
    client: MongoClient = MongoClient(settings.mongodb_uri)
    collection = client[settings.mongodb_database][settings.mongodb_collection]
    steps: list[Step] = []
    try:
        print(f"bench pipeline: starting the server on {server.url} ...", file=sys.stderr)
        server.start(timeout=300)
        pids = {"server": server.proc.pid if server.proc else 0}
        for name in ("consume-db", "consume-inference"):
            procs.append(pipeline.start([name], settings, work / f"{name}.log"))
            pids[name] = procs[-1].pid
        pids |= {s.name: s.pid for s in devservices.status() if s.pid is not None}
        pids["bench (cameras)"] = os.getpid()
        steps = measure_steps(settings, collection, samples, rates, args, pids)
    finally:
        for proc in reversed(procs):
            pipeline.stop(proc)
        server.stop()
        collection.drop()
        client.close()
        _delete_topics(settings)
        if started_services:
            devservices.down()
    pipeline_report.report(steps, args.out, {"stack": "local", "model": str(model_path)})
    return 0
