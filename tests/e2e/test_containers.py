"""End to end, as containers: the images `make containers` built, as the pipeline on one host.

500 images go through the containerised pipeline (cameras -> Kafka -> both consumers -> MongoDB,
labelled through the ml-server container); both consumers' containers are killed (`docker kill`)
mid-run and started again; every image must still be stored and labelled exactly once, with no
dead letters and no consumer lag left. The stack runs as `appliance stack env` makes it: MongoDB
with a login, Kafka's clients on SASL_SSL; neighbours without the logins are refused.

Needs a Docker engine (skipped, saying so, when none answers) and the images (`make
e2e-containers` builds them, then runs this). Environment: APPLIANCE_E2E_TAG (image tag, default
this version), APPLIANCE_E2E_PROJECT (default appliance-e2e), APPLIANCE_E2E_KEEP=1 leaves the
stack running afterwards for a look (`appliance stack status --project appliance-e2e`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance import __version__, model
from appliance.cloud import credentials, pki
from appliance.ops import stack as st
from tests import kafka_probe, mongodb_probe

ROOT = Path(__file__).resolve().parents[2]
COUNT = 500
DEVICES = 4
# 4 cameras x 5 images/s: about 25 s of sending, so the consumers die while images still arrive.
RATE = 5.0
# Kill the consumers once this many images are stored (well before all of them are sent).
KILL_AFTER_STORED = 60
DOWN_S = 5.0
UP_TIMEOUT_S = 420.0
DONE_TIMEOUT_S = 300.0


def say(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[st.Stack]:
    env_file = tmp_path_factory.mktemp("stack") / "appliance.env"
    # One server worker: half the model loading on a small CI machine; batching is unchanged.
    # MongoDB with a user and password, Kafka over SASL_SSL, as by default (`appliance stack env`).
    login = st.tls.load_or_create(st.tls.folder_for(env_file))
    settings = {**st.local_settings(credentials.new(), login), "SERVER_WORKERS": "1"}
    st.write_env(ROOT / "images" / "appliance.env.example", env_file, settings)
    stack = st.Stack(
        project=os.environ.get("APPLIANCE_E2E_PROJECT", "appliance-e2e"),
        tag=os.environ.get("APPLIANCE_E2E_TAG", __version__),
        env_file=env_file,
    )
    problem = st.engine_problem(stack)
    if problem is not None:
        pytest.skip(
            f"no Docker engine answers ({problem}); start one with images/docker-engine.sh "
            "(`make e2e-containers` does it, and builds the images)"
        )
    missing = st.missing_images(stack)
    if missing:
        pytest.fail(f"images missing: {', '.join(missing)}; build them with `make containers`")
    st.down(stack)  # whatever an earlier, interrupted run left
    began = time.monotonic()
    try:
        st.up(stack, producer=False, timeout_s=UP_TIMEOUT_S)
        say(f"stack healthy in {time.monotonic() - began:.0f}s")
        yield stack
    finally:
        if os.environ.get("APPLIANCE_E2E_KEEP") == "1":
            say(f"left running: appliance stack status --project {stack.project}")
        else:
            st.down(stack)


def wait_for(
    stack: st.Stack, done: Callable[[st.Counts], bool], timeout_s: float, what: str
) -> st.Counts:
    deadline = time.monotonic() + timeout_s
    last = st.Counts()
    next_report = 0.0
    while time.monotonic() < deadline:
        last = st.counts(stack)
        if done(last):
            return last
        if time.monotonic() >= next_report:
            say(f"waiting for {what}: {'; '.join(last.lines())}")
            next_report = time.monotonic() + 15
        time.sleep(2)
    containers = "\n".join(s.line() for s in st.statuses(stack))
    pytest.fail(f"{what}: not after {timeout_s:.0f}s; {last}\n{containers}")


def docker(stack: st.Stack, *args: str) -> str:
    return st.docker(stack, *args).stdout.strip()


def test_pipeline_survives_killed_consumers(stack: st.Stack, shared_archive: Path) -> None:
    began = time.monotonic()
    st.start_producer(
        stack, sys.stderr, source=str(shared_archive), count=COUNT, rate=RATE, devices=DEVICES
    )

    at_kill = wait_for(
        stack, lambda c: c.stored >= KILL_AFTER_STORED, 240, f"{KILL_AFTER_STORED} images stored"
    )
    consumers = [stack.container(role) for role in st.CONSUMERS]
    docker(stack, "kill", *consumers)
    say(f"killed {', '.join(consumers)} at: {'; '.join(at_kill.lines())}")
    assert at_kill.labelled < COUNT, "the kill came after the run: slow the cameras down"
    for role in st.CONSUMERS:
        assert not st.inspect_container(stack, role).running
    time.sleep(DOWN_S)
    docker(stack, "start", *consumers)
    say("consumers started again")

    final = wait_for(
        stack,
        lambda c: c.labelled >= COUNT and c.stored >= COUNT and not any(c.lag.values()),
        DONE_TIMEOUT_S,
        f"all {COUNT} images stored and labelled, no lag",
    )
    say(f"done in {time.monotonic() - began:.0f}s: {'; '.join(final.lines())}")

    # Exactly once where it counts: one record per image sent, one document per image.
    assert final.errors == []
    assert final.images == COUNT, "the images topic holds duplicates (or lost some)"
    assert final.stored == COUNT, "documents for images never sent, or some missing"
    assert final.labelled == COUNT
    assert final.dead_lettered == 0
    assert final.predictions >= COUNT  # redelivery after the kill may publish some twice

    # One model labelled them all; the shipped one (the image's default) as well as it scores.
    ((model_id, (matching, checked)),) = final.quality.items()
    assert checked == COUNT
    shipped = model.read_metadata(model.shipped_path())
    if model_id == shipped.model_id and shipped.extra.get("trained") and shipped.test_accuracy:
        # 500 test-split images: a standard error of about 2 points around the recorded top-1.
        assert abs(matching / checked - shipped.test_accuracy) <= 0.07, (matching, shipped)

    producer = st.inspect_container(stack, st.PRODUCER.role)
    assert (producer.state, producer.exit_code) == ("exited", 0), producer
    logs = subprocess.run(
        [stack.docker, "logs", stack.container(st.PRODUCER.role)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"sent {COUNT}, acknowledged {COUNT}, failed 0" in logs.stdout + logs.stderr

    # Every service container healthy again, the restarted consumers included.
    st.wait_healthy(stack, [service.role for service in st.SERVICES], 120, sys.stderr)


def test_mongodb_refuses_a_client_without_the_right_password(stack: st.Stack) -> None:
    """From a container on the stack's network, as a neighbour would try: no login, a wrong one,
    and no TLS (MongoDB speaks TLS only)."""
    script = mongodb_probe.refusal_script("mongodb", tls_ca_file="/etc/appliance/tls/ca.pem")
    out = docker(stack, "exec", stack.container("consume-db"), "python", "-c", script)
    assert out.splitlines() == mongodb_probe.EXPECTED_TLS


def test_kafka_refuses_a_client_without_the_stacks_login(stack: st.Stack) -> None:
    """From a container on the stack's network: only the stack's login, over TLS verified
    against the stack's CA, gets a message acknowledged."""
    other_ca = pki.new_authority("another deployment's CA").cert_pem.decode()
    script = kafka_probe.refusal_script(other_ca, "e2e-login-probe")
    result = st.docker(stack, "exec", stack.container("consume-db"), "python", "-c", script)
    say(f"kafka login probe: {result.stderr.strip()!r}")
    assert result.stdout.splitlines() == kafka_probe.EXPECTED


def test_no_secret_shows_in_a_process_list(stack: st.Stack) -> None:
    values = st.load_env(stack.env_file)
    secrets = [values["KAFKA_PASSWORD"], values["MONGO_INITDB_ROOT_PASSWORD"]]
    for service in st.SERVICES:
        listing = docker(stack, "top", stack.container(service.role), "-eo", "pid,args")
        assert listing and not any(s in listing for s in secrets), service.role


def test_the_pipeline_benchmark_runs_against_the_stack(
    stack: st.Stack, shared_archive: Path, tmp_path: Path
) -> None:
    """`appliance bench pipeline --containers` on the running stack: the load comes from a
    container on its network, every image is labelled, each container's CPU and memory is read,
    the plots are drawn, and the stack it found up is left up."""
    argv = [sys.executable, "-m", "appliance", "bench", "pipeline", "--containers",
            "--project", stack.project, "--env-file", str(stack.env_file), "--tag", stack.tag,
            "--rates", "4,8", "--step-seconds", "3", "--source", str(shared_archive),
            "--all-steps", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    say(f"bench pipeline --containers:\n{done.stdout}")
    result = json.loads((tmp_path / "containers" / "pipeline.json").read_text())
    assert result["stack"] == "containers"
    assert [step["offered"] for step in result["steps"]] == [4.0, 8.0]
    for step in result["steps"]:
        assert step["sent"] == int(step["offered"] * 3)
        assert step["unlabelled"] == 0 and step["to_labelled"]["samples"] == step["sent"]
        usage = step["processes"]
        assert set(usage) == {*(s.role for s in st.SERVICES), "bench (cameras)"}
        # Each container's processes were really read: each holds memory; the server worked.
        assert all(u["rss_mib"] > 0 for u in usage.values()), usage
        assert usage["ml-server"]["cores"] > 0, usage
    for name in ("latency-cdf", "throughput", "lag"):
        png = tmp_path / "containers" / f"pipeline-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not st.inspect_container(stack, "bench").exists
    st.wait_healthy(stack, [service.role for service in st.SERVICES], 60, sys.stderr)
