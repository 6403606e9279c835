"""`appliance bench pipeline --containers` without Docker: the benchmark container's arguments,
the process ids it is handed, and the raw steps it hands back. The run against a real stack is
tests/e2e/test_containers.py."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from appliance.ops import container_bench, pipeline_report, proc_stats
from appliance.ops import stack as st
from appliance.ops.pipeline_bench import Latency, Step

ROOT = Path(__file__).resolve().parents[2]


def args_for(source: str, all_steps: bool = False) -> argparse.Namespace:
    return argparse.Namespace(rates="4,8", step_seconds=3.0, cameras=2, source=source,
                              drain_timeout=60.0, all_steps=all_steps)  # fmt: skip


def tls_stack(tmp_path: Path) -> st.Stack:
    env_file = tmp_path / "appliance.env"
    login = st.tls.load_or_create(st.tls.folder_for(env_file))
    settings = st.local_settings(None, login)
    st.write_env(ROOT / "images" / "appliance.env.example", env_file, settings)
    return st.Stack(project="p", tag="9.9", env_file=env_file)


def test_the_benchmark_runs_in_the_stacks_network_with_the_host_process_table(
    tmp_path: Path,
) -> None:
    stack = tls_stack(tmp_path)
    archive = tmp_path / "images.tar.gz"
    archive.write_bytes(b"")
    pids = {"kafka": 11, "mongodb": 12}
    argv = container_bench.container_arguments(stack, args_for(str(archive)), pids, tmp_path / "o")
    image = argv.index("appliance/producer:9.9")
    options, command = argv[:image], argv[image + 1 :]
    pairs = dict(zip(options[3::2], options[4::2], strict=False))
    assert options[:3] == ["run", "--rm", "--init"]
    assert pairs["--network"] == "p" and pairs["--pid"] == "host"
    assert pairs["--env-file"] == str(stack.env_file) and pairs["--name"] == "p-bench"
    assert pairs["--label"] == "appliance.stack=p", "`stack down` removes a left-over one"
    volumes = [options[i + 1] for i, o in enumerate(options) if o == "--volume"]
    ca = st.tls.folder_for(stack.env_file).resolve() / "ca.pem"
    # Its output folder, the images read-only, and of the TLS files only the CA's certificate.
    assert volumes == [f"{tmp_path / 'o'}:/bench", f"{archive.resolve()}:/data/images.tar.gz:ro",
                       f"{ca}:/etc/appliance/tls/ca.pem:ro"]  # fmt: skip
    assert command[:4] == ["appliance", "bench", "pipeline", "--in-stack"]
    inner = dict(zip(command[4::2], command[5::2], strict=False))
    assert inner == {"--pids": "kafka=11,mongodb=12", "--rates": "4,8", "--step-seconds": "3",
                     "--cameras": "2", "--source": "/data/images.tar.gz",
                     "--drain-timeout": "60", "--out": "/bench"}  # fmt: skip


def test_cifar10_in_the_stack_is_the_producer_images_own_test_split(tmp_path: Path) -> None:
    stack = tls_stack(tmp_path)
    argv = container_bench.container_arguments(stack, args_for("cifar10", True), {}, tmp_path)
    assert argv[argv.index("--source") + 1] == container_bench.BAKED_IMAGES
    assert argv[-1] == "--all-steps"


def test_pids_are_read_back_and_a_bad_list_is_named() -> None:
    assert container_bench.parse_pids("kafka=11,ml-server=12") == {"kafka": 11, "ml-server": 12}
    assert container_bench.parse_pids("") == {}
    with pytest.raises(ValueError, match=r"--pids must be NAME=PID,\.\.\., got 'kafka=x'"):
        container_bench.parse_pids("kafka=x")


def test_a_missing_env_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli import main

    missing = tmp_path / "none.env"
    code = main(["bench", "pipeline", "--containers", "--env-file", str(missing)])
    assert code == 2
    assert f"no env file at {missing}: `make up` makes it" in capsys.readouterr().err


def test_raw_steps_come_back_as_they_were_written(tmp_path: Path) -> None:
    step = Step(
        offered=8.0, seconds=3.1, sent=24, send_late_s=0.01, stored_per_s=7.5,
        labelled_per_s=7.0, to_stored=Latency(0.01, 0.02, 0.03, 0.04, 24),
        to_labelled=Latency.of([]), unlabelled=0, lag_at_end={"db": 1, "inference": 0},
        drain_s=0.5, processes={"kafka": proc_stats.Usage(0.25, 400)},
        lag_over_time=[(2.0, 3), (4.0, 1)], latencies_stored=[0.01, 0.04],
        latencies_labelled=[],
    )  # fmt: skip
    path = tmp_path / pipeline_report.RAW_NAME
    pipeline_report.write_raw(path, [step])
    (back,) = pipeline_report.read_raw(path)
    assert math.isnan(back.to_labelled.p50) and back.to_labelled.samples == 0
    back.to_labelled = step.to_labelled = Latency(0, 0, 0, 0, 0)  # NaN is not equal to itself
    assert back == step
