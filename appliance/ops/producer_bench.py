"""`appliance bench producer`: the cameras' producer against Kafka's own kafka-producer-perf-test,
same broker, same record size (a CIFAR-10 image message), acks=all, idempotence, as fast as each
can, in one run; prints both rates and the ratio.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance import datasets
from appliance.cloud.credentials import write_private
from appliance.config import Settings
from appliance.contract import encode_image_message
from appliance.ops.services.kafka import java_client_properties

TARGET = 0.30  # the cameras' producer / kafka-producer-perf-test
PERF_TEST = "org.apache.kafka.tools.ProducerPerformance"
FINAL = re.compile(r"(\d+) records sent, ([\d.]+) records/sec")


def add_arguments(sub: Any) -> None:
    bench = sub.add_parser("producer", help="the cameras' producer vs kafka-producer-perf-test")
    bench.add_argument("--records", type=int, default=20_000, help="records each (default 20000)")
    bench.add_argument("--source", default="cifar10", help="images, as for `appliance produce`")
    bench.add_argument("--cameras", type=int, default=4, help="camera names (default 4)")


def record_size(samples: list[datasets.Sample]) -> int:
    """The mean size of an `images` message built from these samples."""
    sizes = [len(encode_image_message(s.image, "camera-00", s.label)[1]) for s in samples[:500]]
    return round(sum(sizes) / len(sizes))


def perf_test(classpath: str, settings: Settings, topic: str, records: int, size: int) -> float:
    """kafka-producer-perf-test's records/s, with the cameras' producer settings and login."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java not found on PATH (Kafka's tools are Java)")
    with tempfile.TemporaryDirectory(prefix="appliance-perf-") as tmp:
        login = Path(tmp) / "client.properties"  # the password: in a 0600 file, not in argv
        write_private(login, java_client_properties(settings))
        command = [java, "-cp", classpath, PERF_TEST, "--topic", topic, "--num-records",
                   str(records), "--record-size", str(size), "--throughput", "-1",
                   "--producer.config", str(login), "--producer-props",
                   f"bootstrap.servers={settings.kafka_bootstrap_servers}", "acks=all",
                   "enable.idempotence=true", "linger.ms=5"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    final = [m for m in FINAL.finditer(done.stdout)]
    if done.returncode != 0 or not final:
        raise RuntimeError(f"kafka-producer-perf-test failed:\n{done.stdout[-2000:]}{done.stderr}")
    return float(final[-1][2])


def cameras_rate(
    settings: Settings, samples: list[datasets.Sample], records: int, cams: int
) -> float:
    from appliance.pipeline import producer

    began = time.perf_counter()
    counts = producer.produce(settings, samples, devices=cams, rate=0, count=records)
    seconds = time.perf_counter() - began  # produce() returns once every send is acknowledged
    if counts.acknowledged != records:
        raise RuntimeError(f"the cameras' producer: {counts}")
    return records / seconds


def run(args: argparse.Namespace) -> int:
    from appliance.ops import services as devservices
    from appliance.ops.services.kafka import ensure_kafka_tools

    if args.records < 100 or args.cameras < 1:
        print("bench producer: --records must be >= 100 and --cameras >= 1", file=sys.stderr)
        return 2
    try:
        samples = datasets.load(args.source, "test")
    except datasets.DatasetError as exc:
        print(f"bench producer: {exc}", file=sys.stderr)
        return 2
    config = devservices.ServicesConfig.from_env()
    classpath = ":".join(f"{d}/*" for d in ensure_kafka_tools(config.cache_dir, sys.stderr))
    started = not devservices.is_running(config)
    endpoints = devservices.up(config)
    tag = uuid.uuid4().hex[:8]
    settings = replace(endpoints.settings(), topic_images=f"bench-producer-{tag}")
    size = record_size(samples)
    try:
        print(
            f"kafka-producer-perf-test: {args.records} records of {size} bytes ...", file=sys.stderr
        )
        tool = perf_test(classpath, settings, f"bench-perf-{tag}", args.records, size)
        print(f"the cameras' producer: {args.records} images ...", file=sys.stderr)
        ours = cameras_rate(settings, samples, args.records, args.cameras)
    finally:
        if started:
            devservices.down(config)
    ratio = ours / tool
    print(f"record size: {size} bytes (a CIFAR-10 image message, mean of the first 500)")
    print(f"kafka-producer-perf-test: {tool:.0f} records/s (acks=all, idempotence, linger 5 ms)")
    print(f"the cameras' producer: {ours:.0f} img/s ({args.cameras} cameras, rate 0)")
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"producer / perf-test: {ratio:.2f} (target >= {TARGET:.2f}: {verdict})")
    return 0
