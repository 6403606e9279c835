"""`appliance pipeline`: the whole pipeline on this machine, then how many images landed.

Starts (or reuses) the local Kafka and MongoDB-protocol server, the inference server, both
consumers, and the cameras; waits until every image sent is stored and labelled; prints the counts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from pymongo import MongoClient
from tqdm import tqdm

from appliance import datasets, model
from appliance.config import Settings
from appliance.ops import services as devservices
from appliance.ops.counts import label_quality, quality_lines
from appliance.pipeline import producer
from appliance.server.process import ServerProcess

log = logging.getLogger(__name__)
# The trained model the repository ships; --model (make run MODEL=...) serves another.
DEFAULT_MODEL = model.shipped_path()


def start(command: list[str], settings: Settings, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "appliance", *command],
            env={**os.environ, **settings.to_env()},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def ensure_model(path: Path) -> Path:
    """``path`` when it holds an artifact; otherwise an untrained one saved there, said plainly.

    The shipped model is never made here: outside a source checkout it is absent, and an
    untrained stand-in goes to build/ instead.
    """
    if model.artifact_paths(path)[0].exists():
        return path
    if path == DEFAULT_MODEL:
        path = Path("build/model/untrained.keras")
        if path.exists():
            return path
    print(
        f"no model at {path}: saving a freshly initialised ResNet50 there (labels will be "
        "guesses; `make model` trains one)",
        file=sys.stderr,
    )
    model.create_untrained(path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default="cifar10",
        help="image source, as for `appliance produce` (default: cifar10)",
    )
    parser.add_argument("--count", type=int, default=1000, help="images to send (default: 1000)")
    parser.add_argument("--devices", type=int, default=4, help="cameras (default: 4)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="images/s per camera, 0 = as fast as possible (default: 0)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="model artifact (default: the trained model the repository ships, "
        "images/ml-server/model/resnet50.npz; another path is made untrained if missing)",
    )
    parser.add_argument("--port", type=int, default=8000, help="inference server port")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for every image to be labelled (default: 600)",
    )
    parser.add_argument(
        "--keep-services", action="store_true", help="leave Kafka and MongoDB running afterwards"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path("build/pipeline"),
        help="where the component logs go (default: build/pipeline)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        samples = datasets.load(args.source, "test")
    except datasets.DatasetError as exc:
        print(f"appliance pipeline: {exc}", file=sys.stderr)
        return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env()
    external = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("MONGODB_URI"))
    started_services = not external and not devservices.is_running()
    if not external:
        endpoints = devservices.up()
        settings = endpoints.settings(settings)
    model_path = ensure_model(args.model)
    server = ServerProcess(model_path, args.work_dir / "server.log", port=args.port)
    settings = replace(settings, inference_url=server.url)
    procs: list[subprocess.Popen] = []
    try:
        print(f"waiting for the inference server on {server.url} ...", file=sys.stderr)
        server.start(timeout=300)
        for name in ("consume-db", "consume-inference"):
            procs.append(start([name], settings, args.work_dir / f"{name}.log"))
        began = time.time()
        counts = producer.produce(
            settings,
            samples,
            devices=args.devices,
            rate=args.rate,
            count=args.count,
            order="shuffle",
        )
        print(
            f"cameras: sent {counts.sent}, acknowledged {counts.acknowledged}, "
            f"failed {counts.failed}",
            file=sys.stderr,
        )
        return report(settings, began, counts.acknowledged, args.timeout)
    finally:
        for proc in reversed(procs):
            stop(proc)
        server.stop()
        if started_services and not args.keep_services:
            devservices.down()


def report(settings: Settings, began: float, expected: int, timeout: float) -> int:
    """Wait for this run's documents (timestamp after ``began``), then print the counts."""
    client: MongoClient = MongoClient(settings.mongodb_uri)
    images = client[settings.mongodb_database][settings.mongodb_collection]
    this_run = {"timestamp": {"$gte": began}}
    done = {**this_run, "prediction": {"$exists": True}}
    deadline = time.monotonic() + timeout
    with tqdm(total=expected, unit="img", desc="labelled", file=sys.stderr) as bar:
        while time.monotonic() < deadline:
            labelled = images.count_documents(done)
            bar.update(labelled - bar.n)
            if labelled >= expected:
                break
            time.sleep(1)
    stored = images.count_documents(this_run)
    labelled = images.count_documents(done)
    quality = label_quality(images, this_run)
    client.close()
    print(f"stored {stored}, labelled {labelled} of {expected} images")
    print("\n".join(quality_lines(quality)))
    return 0 if stored == labelled == expected else 1
