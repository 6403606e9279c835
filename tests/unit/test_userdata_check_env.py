"""The check-env baked into each image: it passes rendered settings, names faults, stages TLS."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cloud import topology, userdata
from tests.unit.test_userdata import PEERS, _in_tmp, parse  # noqa: F401 (_in_tmp: autouse)

ROOT = Path(__file__).resolve().parents[2]
CHECK_ENV = ROOT / "roles/appliance_env/files/check-env"
# The settings each baked unit requires (as in the roles' defaults).
REQUIRED = {
    "producer": [["KAFKA_BOOTSTRAP_SERVERS"]],
    "ml-server": [[]],
    "kafka": [
        ["KAFKA_ADVERTISED_LISTENERS"],
        ["KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI"],
        ["KAFKA_BOOTSTRAP_SERVERS", "INFERENCE_URL"],
    ],
    "mongodb": [[]],
}


def run_check_env(tmp_path: Path, content: str | None, required: list[str]):
    env_file = tmp_path / "appliance.env"
    if content is not None:
        env_file.write_text(content)
    return subprocess.run(
        [sys.executable, str(CHECK_ENV), "appliance-test.service", *required],
        env={**os.environ, "APPLIANCE_ENV_FILE": str(env_file), "APPLIANCE_RUN_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("role", list(topology.ROLES))
def test_rendered_settings_pass_the_baked_check(tmp_path, role):
    peers = {name: PEERS[name] for name in topology.ROLES[role].peers}
    _, entry, _ = parse(userdata.render(role, peers, mongodb_user="u", mongodb_password="p w"))
    for required in REQUIRED[role]:
        result = run_check_env(tmp_path, entry["content"], required)
        assert result.returncode == 0, result.stderr


def test_the_baked_check_names_what_is_missing_or_malformed(tmp_path):
    result = run_check_env(tmp_path, None, ["KAFKA_BOOTSTRAP_SERVERS"])
    assert result.returncode == 78
    assert "appliance.env does not exist yet" in result.stderr
    result = run_check_env(tmp_path, "DEVICE_ID=x\n", ["KAFKA_BOOTSTRAP_SERVERS"])
    assert result.returncode == 78
    assert "setting KAFKA_BOOTSTRAP_SERVERS is missing" in result.stderr
    result = run_check_env(tmp_path, "KAFKA_BOOTSTRAP_SERVERS=\n", ["KAFKA_BOOTSTRAP_SERVERS"])
    assert "setting KAFKA_BOOTSTRAP_SERVERS is empty" in result.stderr
    result = run_check_env(tmp_path, "KAFKA_BOOTSTRAP_SERVERS=kafka\n", ["KAFKA_BOOTSTRAP_SERVERS"])
    assert result.returncode == 78
    assert "KAFKA_BOOTSTRAP_SERVERS is malformed" in result.stderr
    assert "host:port" in result.stderr
    result = run_check_env(tmp_path, "MONGODB_URI=localhost:27017\n", ["MONGODB_URI"])
    assert "MONGODB_URI is malformed" in result.stderr
    result = run_check_env(tmp_path, "this is not a setting\n", [])
    assert result.returncode == 78 and "line 1 is not KEY=VALUE" in result.stderr


def test_the_health_check_cadence_is_checked_whenever_it_is_set(tmp_path):
    ok = run_check_env(tmp_path, "HEALTHCHECK_INTERVAL=60s\nHEALTHCHECK_TIMEOUT=500ms\n", [])
    assert ok.returncode == 0, ok.stderr
    # Only these reach the unit's own environment (its EnvironmentFile=), not the whole file.
    written = tmp_path / "appliance-test.service.env"
    assert written.read_text() == "HEALTHCHECK_INTERVAL=60s\nHEALTHCHECK_TIMEOUT=500ms\n"
    assert run_check_env(tmp_path, "MONGODB_URI=mongodb://u:secret@db:27017\n", []).returncode == 0
    assert written.read_text() == ""
    for bad in ("HEALTHCHECK_INTERVAL=60", "HEALTHCHECK_TIMEOUT=0s", "HEALTHCHECK_INTERVAL="):
        result = run_check_env(tmp_path, bad + "\n", [])
        assert result.returncode == 78, bad
        assert f"setting {bad.split('=')[0]} is malformed" in result.stderr
        assert "a duration such as 30s" in result.stderr


def run_check_env_tls(tmp_path: Path, content: str, files: dict[str, str], wanted: str):
    tls = tmp_path / "tls-in"
    tls.mkdir(exist_ok=True)
    for name, text in files.items():
        (tls / name).write_text(text)
    (tmp_path / "appliance.env").write_text(content)
    return subprocess.run(
        [sys.executable, str(CHECK_ENV), "appliance-test.service"],
        env={
            **os.environ,
            "APPLIANCE_ENV_FILE": str(tmp_path / "appliance.env"),
            "APPLIANCE_RUN_DIR": str(tmp_path / "run"),
            "APPLIANCE_TLS_DIR": str(tls),
            "TLS_FILES": wanted,
            "TLS_UID": str(os.getuid()),
        },
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_baked_check_hands_the_container_a_private_copy_of_its_tls_files(tmp_path):
    settings = "KAFKA_CA_FILE=/etc/appliance/tls/ca.pem\n"
    files = {"ca.pem": "CA\n", "kafka.pem": "KEY\n", "mongodb.pem": "NOT THIS ONE\n"}
    result = run_check_env_tls(tmp_path, settings, files, "ca.pem,kafka.pem")
    assert result.returncode == 0, result.stderr
    stage = tmp_path / "run/tls/appliance-test.service"
    assert sorted(p.name for p in stage.iterdir()) == ["ca.pem", "kafka.pem"]
    assert stat.S_IMODE(stage.stat().st_mode) == 0o700
    for name in ("ca.pem", "kafka.pem"):
        assert stat.S_IMODE((stage / name).stat().st_mode) == 0o400
        assert (stage / name).read_text() == files[name]
    unit_env = (tmp_path / "run/appliance-test.service.env").read_text()
    assert unit_env == (
        f"TLS_MOUNTS=--volume={stage}/ca.pem:/etc/appliance/tls/ca.pem:ro "
        f"--volume={stage}/kafka.pem:/etc/appliance/tls/kafka.pem:ro\n"
    )
    # Without TLS files (--no-tls): nothing to mount, and last start's copies are gone.
    result = run_check_env_tls(tmp_path, "KAFKA_SECURITY_PROTOCOL=PLAINTEXT\n", {}, "")
    assert result.returncode == 0 and not stage.exists()
    assert (tmp_path / "run/appliance-test.service.env").read_text() == ""


def test_the_baked_check_names_a_tls_file_the_settings_need_and_the_user_data_lacks(tmp_path):
    result = run_check_env_tls(
        tmp_path, "KAFKA_KEYSTORE_FILE=/etc/appliance/tls/kafka.pem\n", {"ca.pem": "CA\n"},
        "ca.pem,kafka.pem",
    )  # fmt: skip
    assert result.returncode == 78
    assert "setting KAFKA_KEYSTORE_FILE names /etc/appliance/tls/kafka.pem, but" in result.stderr
    assert "kafka.pem does not exist" in result.stderr
