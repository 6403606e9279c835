"""The local VM provider without booting anything: its plan, QEMU's command line and its state."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from appliance.cloud import localvm, processes, topology
from appliance.config import ConfigError


@pytest.fixture
def bakes(tmp_path: Path) -> Path:
    builds = []
    for role in topology.ROLES:
        for stamp in ("old", "new"):
            path = tmp_path / f"appliance-{role}-{stamp}.qcow2"
            path.write_bytes(b"qcow")
            builds.append({"files": [{"name": str(path)}], "custom_data": {"image": role}})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"builds": builds}))
    return manifest


def test_newest_bake_of_each_image(bakes):
    newest = localvm.newest_bakes(bakes)
    assert {role: p.name for role, p in newest.items()} == {
        role: f"appliance-{role}-new.qcow2" for role in topology.ROLES
    }
    with pytest.raises(ConfigError, match="bake the images first"):
        localvm.newest_bakes(bakes.parent / "missing.json")


def test_a_subnet_this_machine_uses_is_refused():
    routes = json.loads(subprocess.run(["ip", "-j", "route"], capture_output=True).stdout)
    mine = next(r["dst"] for r in routes if r.get("dst", "default") != "default")
    with pytest.raises(ConfigError, match="collides"):
        localvm.check_subnet(mine)
    assert str(localvm.check_subnet(localvm.SUBNET)) == localvm.SUBNET


def test_each_vm_has_a_private_nic_and_an_admin_nic_that_reaches_nothing(bakes, tmp_path):
    cloud = localvm.LocalCloud(tmp_path / "cloud")
    state = cloud.prepare("t", localvm.SUBNET, bakes)
    assert [vm.address for vm in state.vms.values()] == [
        "10.213.57.10", "10.213.57.11", "10.213.57.12", "10.213.57.13"
    ]  # fmt: skip
    assert sum(vm.memory_mib for vm in state.vms.values()) <= 10 * 1024
    for role, vm in state.vms.items():
        command = " ".join(cloud.qemu_command(state, vm))
        assert "user,id=admin,restrict=on,hostfwd=tcp:127.0.0.1:" in command
        assert f"vde,id=private,sock={cloud.switch.resolve()}" in command
        assert f"netdev=private,mac={vm.mac}" in command
        assert "append=on" in command  # the console survives a power cycle
        assert ("27017" in command) == (role == "mongodb")
    # The state survives a reload, and the SSH config names each role.
    assert cloud.load() == state
    assert "Host kafka\n  HostName 127.0.0.1" in cloud.ssh_config.read_text()
    boots = cloud.plan(state).by_role()
    assert "MACAddress=52:54:00:d5:39:0c" in boots["kafka"].user_data
    assert "ssh_authorized_keys" in boots["producer"].user_data


def test_under_emulation_health_checks_are_rarer_unless_set(bakes, tmp_path):
    cloud = localvm.LocalCloud(tmp_path / "cloud")
    state = cloud.prepare("t", localvm.SUBNET, bakes)
    for role, boot in cloud.plan(state).by_role().items():
        assert "HEALTHCHECK_INTERVAL=60s" in boot.user_data, role
        assert "HEALTHCHECK_TIMEOUT=60s" in boot.user_data, role
    given = cloud.plan(state, settings={"HEALTHCHECK_INTERVAL": "20s"}).by_role()["kafka"]
    assert "HEALTHCHECK_INTERVAL=20s" in given.user_data
    assert "HEALTHCHECK_INTERVAL=60s" not in given.user_data
    kvm = localvm.LocalCloud(tmp_path / "kvm", accel="kvm")
    kvm_state = kvm.prepare("t", localvm.SUBNET, bakes)
    assert "HEALTHCHECK_INTERVAL" not in kvm.plan(kvm_state).by_role()["kafka"].user_data


def test_down_keeps_only_the_serial_consoles(bakes, tmp_path):
    cloud = localvm.LocalCloud(tmp_path / "cloud")
    state = cloud.prepare("t", localvm.SUBNET, bakes)
    for role in state.vms:
        (cloud.vm_dir(role) / "seed").mkdir(parents=True)
        (cloud.vm_dir(role) / "seed" / "user-data").write_text("#cloud-config\n")
        (cloud.vm_dir(role) / "disk.qcow2").write_bytes(b"disk")
        (cloud.vm_dir(role) / "console.log").write_text(f"{role} booted\n")
    cloud.down()
    left = sorted(str(p.relative_to(cloud.root)) for p in cloud.root.rglob("*") if p.is_file())
    assert left == sorted(f"{role}/console.log" for role in state.vms)
    assert cloud.load() is None


def test_under_emulation_each_image_gets_its_defaults_unless_set(bakes, tmp_path):
    cloud = localvm.LocalCloud(tmp_path / "cloud")
    state = cloud.prepare("t", localvm.SUBNET, bakes)
    boots = cloud.plan(state).by_role()
    assert "SERVER_WORKERS=1" in boots["ml-server"].user_data
    assert "KAFKA_JVM_OPTS=-XX:TieredStopAtLevel=1" in boots["kafka"].user_data
    assert "INFERENCE_BATCH_SIZE=8" in boots["kafka"].user_data
    assert "SERVER_WORKERS" not in boots["kafka"].user_data
    assert "KAFKA_JVM_OPTS" not in boots["ml-server"].user_data
    # A setting given for all images, or for one, wins over the default.
    for options in (
        {"settings": {"SERVER_WORKERS": "2"}},
        {"role_settings": {"ml-server": {"SERVER_WORKERS": "2"}}},
    ):
        server = cloud.plan(state, **options).by_role()["ml-server"].user_data
        assert "SERVER_WORKERS=2" in server and "SERVER_WORKERS=1" not in server, options
    kvm = localvm.LocalCloud(tmp_path / "kvm", accel="kvm")
    kvm_state = kvm.prepare("t", localvm.SUBNET, bakes)
    assert "SERVER_WORKERS" not in kvm.plan(kvm_state).by_role()["ml-server"].user_data


def test_usage_reads_a_running_process_memory_and_cpu():
    import os

    rss, cpu = processes.usage(os.getpid())
    assert rss > 10 and cpu > 0  # this pytest process: tens of MiB, some CPU already
    assert processes.usage(2**22 + 1) == (0, 0.0)  # no such process


def test_usage_of_a_zombie_is_no_memory_not_an_error():
    import subprocess
    import time
    from pathlib import Path

    child = subprocess.Popen(["true"])
    try:
        # Not reaped yet: a zombie, whose /proc status has no VmRSS line.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert "VmRSS" not in Path(f"/proc/{child.pid}/status").read_text()
        assert processes.usage(child.pid)[0] == 0
    finally:
        child.wait()
