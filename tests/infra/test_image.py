"""What every baked appliance image must have; see conftest.py for how to point it at hosts."""

from __future__ import annotations

import json
import time

import pytest

from appliance.cloud import topology
from tests.infra.conftest import UNIT_IMAGES

ENV_FILE = topology.ENV_FILE
PORTS = {
    "ml-server": topology.ML_SERVER_PORT,
    "kafka": topology.KAFKA_PORT,
    "mongodb": topology.MONGODB_PORT,
}


def test_docker_is_running_and_enabled(host):
    docker = host.service("docker")
    assert docker.is_enabled
    assert docker.is_running


def test_docker_keeps_containers_across_restarts_and_rotates_logs(host):
    config = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert config["live-restore"] is True
    assert config["log-driver"] == "json-file"
    assert config["log-opts"]["max-size"] and int(config["log-opts"]["max-file"]) >= 1


def test_container_images_are_loaded_at_the_expected_version(
    host, units, image_prefix, expected_tag
):
    for unit in units:
        ref = f"{image_prefix}/{UNIT_IMAGES[unit]}:{expected_tag}"
        with host.sudo():
            result = host.run("docker image inspect --format '{{.Id}}' %s", ref)
        assert result.rc == 0, f"{ref} is not in Docker: {result.stderr}"


def test_units_are_enabled_and_run_the_image_with_the_env_file(
    host, units, image_prefix, expected_tag
):
    for unit in units:
        assert host.service(unit).is_enabled, f"{unit} is not enabled"
        text = host.file(f"/etc/systemd/system/{unit}").content_string
        assert f"--env-file {ENV_FILE}" in text
        assert f"{image_prefix}/{UNIT_IMAGES[unit]}:{expected_tag}" in text
        assert "ExecStartPre=/usr/local/libexec/appliance/check-env" in text
        assert "Restart=on-failure" in text
        assert "Requires=docker.service" in text


def test_settings_watch_is_enabled(host):
    assert host.service("appliance-env.path").is_enabled
    assert host.file("/usr/local/libexec/appliance/check-env").mode == 0o755


def test_fresh_bake_started_nothing_and_has_no_settings(host, units, baked):
    if not baked:
        pytest.skip("a booted VM (pass --baked for a fresh bake)")
    assert not host.file(ENV_FILE).exists
    for unit in units:
        assert not host.service(unit).is_running, f"{unit} started during the bake"


def test_fresh_bake_has_no_host_keys_build_keys_or_cloud_init_state(host, baked):
    if not baked:
        pytest.skip("a booted VM has its own host keys (pass --baked for a fresh bake)")
    with host.sudo():
        keys = host.run("ls /etc/ssh/ssh_host_* 2>/dev/null").stdout.split()
        authorized = host.run(
            "ls /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys 2>/dev/null"
        ).stdout.split()
        cloud_state = host.run(
            "ls -d /var/lib/cloud/instance /var/lib/cloud/instances/* /var/lib/cloud/data/* "
            "/var/log/cloud-init.log 2>/dev/null"
        ).stdout.split()
    assert keys == [], f"SSH host keys left: {keys}"
    assert authorized == [], f"build keys left: {authorized}"
    assert cloud_state == [], f"cloud-init state left: {cloud_state}"
    assert host.file("/etc/machine-id").content_string.strip() == ""


def test_fresh_bake_holds_no_secret_and_no_key_material(
    host, units, image_prefix, expected_tag, baked
):
    """Passwords and keys come only with a deployment's user-data, never in the image."""
    if not baked:
        pytest.skip("a booted VM holds its user-data's secrets (pass --baked for a fresh bake)")
    with host.sudo():
        found = host.run(
            # The appliance's own files, and where a build step could leave a key.
            "grep -rlsE 'PASSWORD=|PRIVATE KEY' /etc/appliance /etc/systemd/system "
            "/usr/local/libexec/appliance /root /home 2>/dev/null"
        ).stdout.split()
        assert found == [], f"secret or key material baked in: {found}"
        # Nor a CA: which CA to trust is the deployment's to say, through its user-data.
        assert not host.file("/etc/appliance/tls").exists, "TLS files baked in"
        certs = host.run("grep -rls 'BEGIN CERTIFICATE' /etc/appliance 2>/dev/null").stdout.split()
        assert certs == [], f"certificates baked in: {certs}"
        for unit in units:
            ref = f"{image_prefix}/{UNIT_IMAGES[unit]}:{expected_tag}"
            env = host.run("docker image inspect --format '{{json .Config.Env}}' %s", ref).stdout
            assert "PASSWORD" not in env, f"{ref} carries a password in its environment: {env}"


def test_booted_settings_file_is_root_only(host, baked):
    if baked:
        pytest.skip("a fresh bake has no settings yet")
    settings = host.file(ENV_FILE)
    assert settings.exists, f"{ENV_FILE} is missing: was the VM booted with its user-data?"
    assert settings.user == "root" and settings.group == "root"
    assert settings.mode == 0o600


def test_booted_units_stay_running(host, units, baked, stable_window):
    """Active now and all through the window, with no restart: a crash-looping unit is caught
    however the samples fall between its restarts (systemd counts them in NRestarts)."""
    if baked:
        pytest.skip("a fresh bake runs nothing")

    def restarts(unit: str) -> int:
        with host.sudo():
            return int(host.check_output("systemctl show -p NRestarts --value %s", unit))

    before = {unit: restarts(unit) for unit in units}
    deadline = time.monotonic() + stable_window
    while True:
        for unit in units:
            assert host.service(unit).is_running, f"{unit} is not running"
        if time.monotonic() >= deadline:
            break
        time.sleep(5)
    for unit in units:
        assert restarts(unit) == before[unit], f"{unit} restarted during {stable_window:.0f} s"


def test_booted_port_is_listening(host, image, baked, listen_timeout):
    if baked:
        pytest.skip("a fresh bake listens on nothing")
    if image not in PORTS:
        pytest.skip(f"the {image} image listens on nothing")
    port = PORTS[image]

    def listening() -> bool:
        return any(host.socket(f"tcp://{a}:{port}").is_listening for a in ("0.0.0.0", "::"))

    # The unit runs as soon as its container starts; the server inside may take a while to bind.
    deadline = time.monotonic() + listen_timeout
    while not listening():
        assert time.monotonic() < deadline, f"nothing listens on {port} after {listen_timeout} s"
        time.sleep(5)
