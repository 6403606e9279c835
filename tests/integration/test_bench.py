"""`appliance bench serve` end to end at a tiny setting: it must run, not measure well."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def test_bench_serve_runs_and_reports_every_phase(model_path: Path, tmp_path: Path) -> None:
    # A PROMETHEUS_MULTIPROC_DIR that does not exist yet, as the benchmark gives each server.
    argv = [sys.executable, "-m", "appliance", "bench", "serve", "--model", str(model_path),
            "--batch", "4", "--clients", "4", "--seconds", "1", "--rounds", "1",
            "--warmup", "0.5", "--workers", "1", "--naive-workers", "1"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for phase in ("in-process", "server", "naive server"):
        line = re.search(rf"^{phase}: ([\d.]+) img/s", done.stdout, re.M)
        assert line, f"no {phase} figure in:\n{done.stdout}"
        assert float(line[1]) > 0, line[0]
    assert re.search(r"^server / in-process: [\d.]+", done.stdout, re.M), done.stdout
    assert re.search(r"^server / naive: [\d.]+x", done.stdout, re.M), done.stdout


def test_bench_serve_measures_the_graph_the_image_serves(model_path: Path, tmp_path: Path) -> None:
    from appliance.ml import onnx_artifact

    graph = tmp_path / "graph" / "resnet50.onnx"
    onnx_artifact.export(model_path, graph)
    argv = [sys.executable, "-m", "appliance", "bench", "serve", "--model", str(graph),
            "--backend", "openvino", "--batch", "4", "--clients", "4", "--seconds", "1",
            "--rounds", "1", "--warmup", "0.5", "--workers", "1"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no naive phase for a graph artifact" in done.stdout
    for phase in ("in-process", "server"):
        line = re.search(rf"^{phase}: ([\d.]+) img/s", done.stdout, re.M)
        assert line and float(line[1]) > 0, done.stdout
    assert "openvino model call" in done.stdout


def test_bench_storage_runs_and_reports_each_size(services, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "appliance", "bench", "storage", "--uri", services.mongodb_uri,
            "--uri", services.mongodb_uri, "--sizes", "20,60", "--image-bytes", "100"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("127.0.0.1:")]
    assert [int(row[1]) for row in rows] == [20, 60, 20, 60], done.stdout
    assert "@" not in done.stdout, "no credentials in the table"
    for row in rows:
        assert all(float(value) > 0 for value in row[2:]), row
    # The throwaway collections are gone.
    from pymongo import MongoClient

    client: MongoClient = MongoClient(services.mongodb_uri)
    assert client["appliance_bench"].list_collection_names() == []
    client.close()


def test_bench_storage_refuses_sizes_that_do_not_rise(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "appliance", "bench", "storage", "--sizes", "50,20"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "--sizes must rise and be positive, got '50,20'" in done.stderr


def test_bench_pipeline_runs_the_steps_and_writes_the_table_json_and_plots(
    services, model_path: Path, shared_archive: Path, tmp_path: Path
) -> None:
    import json

    argv = [sys.executable, "-m", "appliance", "bench", "pipeline", "--rates", "4,8",
            "--step-seconds", "3", "--source", str(shared_archive), "--model", str(model_path),
            "--all-steps"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"^\s+\d+\s+\d", line)]
    assert [row[0] for row in rows] == ["4", "8"], done.stdout
    result = json.loads((tmp_path / "build/bench/pipeline.json").read_text())
    assert [step["offered"] for step in result["steps"]] == [4.0, 8.0]
    for step in result["steps"]:
        assert step["sent"] == int(step["offered"] * 3)
        # Every image of the step was labelled, each with a latency from its scheduled send.
        assert step["unlabelled"] == 0 and step["to_labelled"]["samples"] == step["sent"]
        assert 0 < step["to_stored"]["p50"] <= step["to_stored"]["max"]
        assert set(step["processes"]) >= {"server", "consume-db", "consume-inference", "kafka"}
    for name in ("latency-cdf", "throughput", "lag"):
        png = tmp_path / f"build/bench/pipeline-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_bench_producer_compares_with_kafkas_perf_test(
    services, shared_archive: Path, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "appliance", "bench", "producer", "--records", "300",
            "--source", str(shared_archive)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    tool = re.search(r"^kafka-producer-perf-test: (\d+) records/s", done.stdout, re.M)
    ours = re.search(r"^the cameras' producer: (\d+) img/s", done.stdout, re.M)
    ratio = re.search(r"^producer / perf-test: ([\d.]+)", done.stdout, re.M)
    assert tool and ours and ratio, done.stdout
    assert int(tool[1]) > 0 and int(ours[1]) > 0
    # The printed ratio is of the unrounded rates: within what rounding each to an integer allows
    # (the 2-decimal ratio itself rounds by 0.005).
    low = (int(ours[1]) - 0.5) / (int(tool[1]) + 0.5) - 0.005
    high = (int(ours[1]) + 0.5) / (int(tool[1]) - 0.5) + 0.005
    assert low <= float(ratio[1]) <= high, (ratio[0], ours[0], tool[0])


def test_bench_runtimes_compares_every_runtime_on_the_same_images(
    model_path: Path, shared_archive: Path, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "appliance", "bench", "runtimes", "--model", str(model_path),
            "--data", str(shared_archive), "--test-limit", "40", "--calibration-images", "8",
            "--batches", "1", "4", "--seconds", "0.2", "--out", str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "runtimes.json").read_text())
    rows = {row["runtime"]: row for row in report["rows"]}
    assert list(rows) == ["tensorflow", "onnxruntime", "openvino-fp32", "openvino-bf16",
                          "openvino-int8"]  # fmt: skip
    assert report["test_images"] == 40 and report["calibration_images"] == 8
    for name, row in rows.items():
        assert all(v > 0 for v in row["img_per_s"].values()), name
        assert re.search(rf"^\| {name} \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", done.stdout, re.M)
    # The float32 runtimes compute the same function: the same label for every image.
    for name in ("tensorflow", "onnxruntime", "openvino-fp32"):
        assert rows[name]["agrees_with_tensorflow"] == 1.0, name
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 40_000_000
