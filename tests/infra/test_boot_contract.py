"""The boot contract on a booted image (DESIGN.md): run with --boot-contract against a test host.

It rewrites /etc/appliance/appliance.env, so never point it at a VM that matters. tests/infra/run.sh
boots each baked systemd container (docker restart) and runs this before test_image.py.

1. Booted without settings: no container starts; the journal says the settings file is missing.
2. Settings without a required peer: each unit that needs it logs the setting's name and does not
   start its container.
3. The full settings arrive (as `appliance userdata` renders them, plus a health-check cadence):
   the units start by themselves (appliance-env.path), without a reboot or a manual restart, and
   hand the cadence to `docker run`.
"""

from __future__ import annotations

import base64
import time

import pytest
import yaml

from appliance.cloud import topology, userdata

ENV_FILE = topology.ENV_FILE
PEERS = {"kafka": "10.0.0.12", "mongodb": "10.0.0.10", "ml-server": "10.0.0.11"}


@pytest.fixture(autouse=True)
def _only_when_asked(request):
    if not request.config.getoption("--boot-contract"):
        pytest.skip("pass --boot-contract (it rewrites the settings file)")


def journal(host, unit: str) -> str:
    with host.sudo():
        return host.run("journalctl --no-pager -o cat -u %s", unit).stdout


def container_running(host, unit: str) -> bool:
    name = unit.removesuffix(".service")
    with host.sudo():
        out = host.run("docker ps --filter name=^/%s$ --format '{{.Names}}'", name).stdout
    return out.strip() == name


def write_settings(host, text: str) -> None:
    data = base64.b64encode(text.encode()).decode()
    with host.sudo():
        host.run_test("echo %s | base64 -d > /tmp/appliance.env.new", data)
        # install(1) writes the file in place: appliance-env.path sees it closed after writing.
        host.run_test("install -m 0600 -o root -g root /tmp/appliance.env.new %s", ENV_FILE)
        host.run("rm -f /tmp/appliance.env.new")


def wait_for(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(2)


def rendered_settings(image: str) -> str:
    """The env file's content exactly as the image's user-data writes it."""
    peers = {role: PEERS[role] for role in topology.ROLES[image].peers}
    document = yaml.safe_load(userdata.render(image, peers))
    (entry,) = [f for f in document["write_files"] if f["path"] == ENV_FILE]
    assert entry["permissions"] == "0600"
    return entry["content"]


def test_booted_without_settings_starts_nothing(host, units):
    with host.sudo():
        assert not host.file(ENV_FILE).exists, "run this on a host booted without user-data"
    for unit in units:
        wait_for(
            f"{unit} says the settings file is missing",
            lambda unit=unit: "does not exist yet" in journal(host, unit),
            60,
        )
        assert not container_running(host, unit)


def test_missing_peer_is_named_and_blocks_the_container(host, image, units):
    full = rendered_settings(image)
    required = {
        unit: host.file(f"/etc/systemd/system/{unit}")
        .content_string.split("ExecStartPre=/usr/local/libexec/appliance/check-env ", 1)[1]
        .splitlines()[0]
        .split()[1:]
        for unit in units
    }
    needed = sorted({name for names in required.values() for name in names})
    if not needed:
        pytest.skip(f"the {image} image needs no peer")
    for missing in needed:
        text = "".join(
            line + "\n" for line in full.splitlines() if not line.startswith(missing + "=")
        )
        write_settings(host, text)
        for unit, names in required.items():
            if missing in names:
                wait_for(
                    f"{unit} names {missing}",
                    lambda unit=unit, missing=missing: (
                        f"setting {missing} is missing" in journal(host, unit)
                    ),
                )
                assert not container_running(host, unit)


def test_settings_arriving_start_the_units(host, image, units):
    # With a health-check cadence of its own, which the units hand to `docker run`.
    write_settings(host, rendered_settings(image) + "HEALTHCHECK_INTERVAL=37s\n")
    for unit in units:
        wait_for(f"{unit} running", lambda unit=unit: host.service(unit).is_running, 120)
        wait_for(f"{unit}'s container running", lambda unit=unit: container_running(host, unit))
        with host.sudo():
            interval = host.check_output(
                "docker inspect --format '{{.Config.Healthcheck.Interval}}' %s",
                unit.removesuffix(".service"),
            )
        assert interval == "37s", f"{unit}: health-check interval {interval}"
