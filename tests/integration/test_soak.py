"""The soak (`pytest -m soak`, not in `make test`): the pipeline under steady load for minutes.

It reports each process's resident memory at the start and the end, and asserts that consumer lag
stays bounded and that everything acknowledged is stored and labelled. The rate is
APPLIANCE_SOAK_RATE img/s (default 14: 70% of the 20 img/s the fault matrix shows this machine
carries; set it to 70% of the saturation rate `appliance bench pipeline` measures on yours) for
APPLIANCE_SOAK_MINUTES (default 10).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time

import pytest

from appliance.ops.counts import measure
from appliance.ops.proc_stats import tree
from appliance.pipeline import producer

from .harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(3600)]
RATE = float(os.environ.get("APPLIANCE_SOAK_RATE", "14"))
MINUTES = float(os.environ.get("APPLIANCE_SOAK_MINUTES", "10"))
CAMERAS = 4
SAMPLE_S = 10.0


def test_steady_load_keeps_lag_bounded_and_memory_flat(
    settings, inference_server, consumers, collection, cifar_test_samples
):
    from appliance.ops import services as devservices

    served = dataclasses.replace(settings, inference_url=inference_server.url)
    db = consumers("consume-db", served)
    inference = consumers("consume-inference", served)
    assert inference_server.proc is not None and db.proc and inference.proc
    pids = {"DB consumer": db.proc.pid, "inference consumer": inference.proc.pid,
            "inference server": inference_server.proc.pid}  # fmt: skip
    for entry in devservices.status():
        if entry.running and entry.pid is not None:
            pids[entry.name] = entry.pid
    seconds = MINUTES * 60
    result: dict = {}
    cameras = threading.Thread(
        target=lambda: result.update(
            counts=producer.produce(
                served, cifar_test_samples, devices=CAMERAS, rate=RATE / CAMERAS,
                duration=seconds, order="shuffle", progress=False,
            )
        )
    )  # fmt: skip
    cameras.start()
    time.sleep(30)  # past start-up: the servers' first requests, the JIT, the caches
    start_rss = {name: tree(pid).rss_mib for name, pid in pids.items()}
    lags: list[int] = []
    while cameras.is_alive():
        counts = measure(served)
        lags.append(sum(counts.lag.values()))
        print(f"soak: {'; '.join(counts.lines())}", flush=True)
        time.sleep(SAMPLE_S)
    end_rss = {name: tree(pid).rss_mib for name, pid in pids.items()}
    sent = result["counts"]
    wait_for(
        lambda: collection.count_documents({"prediction": {"$exists": True}}) >= sent.acknowledged,
        300,
        "the soak's images labelled",
    )
    print(f"\nsoak at {RATE:g} img/s for {MINUTES:g} min: {sent.acknowledged} images")
    print(f"{'process':<20}{'RSS start MiB':>15}{'RSS end MiB':>13}")
    for name in pids:
        print(f"{name:<20}{start_rss[name]:>15.0f}{end_rss[name]:>13.0f}")
    print(f"lag: max {max(lags)}, median {statistics.median(lags):.0f}")
    assert sent.failed == 0 and sent.acknowledged == sent.sent
    assert collection.count_documents({}) == sent.acknowledged
    # Bounded: never more than 10 s of images behind, and not growing from the first third of
    # the run to the last.
    assert max(lags) <= 10 * RATE, lags
    third = max(1, len(lags) // 3)
    assert statistics.mean(lags[-third:]) <= 2 * statistics.mean(lags[:third]) + RATE, lags
