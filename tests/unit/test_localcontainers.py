"""The containers provider's parts that need no Docker: write_files, the plan, the state.

apply_write_files' contract is the commands it gives ``run`` (a root shell in the container), so
these tests record them, and also run them with this machine's sh into a temporary folder.
"""

from __future__ import annotations

import base64
import grp
import gzip
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the cloud/infra extras")

from appliance.cloud import credentials, topology, transport  # noqa: E402
from appliance.cloud import localcontainers as lc  # noqa: E402
from appliance.cloud import plan as plans  # noqa: E402
from appliance.cloud.writefiles import apply_write_files  # noqa: E402
from appliance.config import ConfigError  # noqa: E402

ADDRESSES = {"mongodb": "10.9.8.10", "ml-server": "10.9.8.11", "kafka": "10.9.8.12",
             "producer": "10.9.8.13"}  # fmt: skip
TRICKY = "A='it'\"'\"'s' $HOME\nB=$(touch /tmp/pwned) `id` \\n %s %%\nC=\"quoted $PATH\"\n"


class Recorder:
    """A fake ``run``: keeps each command; fails on the ``fail_at``-th when asked."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.commands: list[str] = []
        self.fail_at = fail_at

    def __call__(self, command: str) -> None:
        self.commands.append(command)
        if self.fail_at is not None and len(self.commands) == self.fail_at:
            raise RuntimeError("exit 1")


def user_data(*entries: dict) -> str:
    return "#cloud-config\n" + yaml.safe_dump({"write_files": list(entries)})


def payload(command: str) -> bytes:
    (b64,) = re.findall(r"printf %s (\S+) \| base64 -d", command)
    return base64.b64decode(b64.strip("'"))


def me() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def test_the_plans_settings_file_is_written_with_its_mode_owner_and_content() -> None:
    boot = plans.make_plan("t", ADDRESSES).by_role()["kafka"]
    entry = yaml.safe_load(boot.user_data)["write_files"][0]
    run = Recorder()

    written = apply_write_files(boot.user_data, run)

    assert written == [topology.ENV_FILE]
    (command,) = run.commands
    assert payload(command).decode() == entry["content"]
    assert "chmod 0600 " in command and "chown root:root " in command
    assert command.endswith(f'mv -f "$tmp" {topology.ENV_FILE}')
    assert "mkdir -p /etc/appliance" in command


def test_quotes_and_dollars_survive_a_real_shell(tmp_path: Path) -> None:
    user, group = me()
    target = tmp_path / "etc" / "appliance" / "appliance.env"
    data = user_data(
        {"path": str(target), "content": TRICKY, "permissions": "0640", "owner": f"{user}:{group}"}
    )
    run = Recorder()
    apply_write_files(data, run)
    (command,) = run.commands
    assert "'" not in command.split("printf %s ")[1].split(" |")[0], "content must travel encoded"

    subprocess.run(["sh", "-c", command], check=True)

    assert target.read_text() == TRICKY
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())
    assert sorted(p.name for p in target.parent.iterdir()) == ["appliance.env"], "temp file left"
    assert not Path("/tmp/pwned").exists()


def test_rewriting_a_file_replaces_it_whole(tmp_path: Path) -> None:
    user, group = me()
    target = tmp_path / "appliance.env"
    target.write_text("OLD=1\n" * 100)
    run = Recorder()
    apply_write_files(
        user_data({"path": str(target), "content": "NEW=2\n", "owner": f"{user}:{group}"}), run
    )
    subprocess.run(["sh", "-c", run.commands[0]], check=True)
    assert target.read_text() == "NEW=2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # cloud-init's default mode


def test_append_keeps_what_was_there(tmp_path: Path) -> None:
    user, group = me()
    target = tmp_path / "log.txt"
    target.write_text("first\n")
    run = Recorder()
    entry = {"path": str(target), "content": "second $x\n", "append": True, "permissions": "0600",
             "owner": f"{user}:{group}"}  # fmt: skip
    apply_write_files(user_data(entry), run)
    subprocess.run(["sh", "-c", run.commands[0]], check=True)
    assert target.read_text() == "first\nsecond $x\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_defaults_are_cloud_inits_root_root_0644() -> None:
    run = Recorder()
    apply_write_files(user_data({"path": "/etc/motd", "content": "hi\n"}), run)
    assert "chown root:root " in run.commands[0]
    assert "chmod 0644 " in run.commands[0]


def test_an_owner_without_group_uses_the_users_group_and_int_permissions_are_octal() -> None:
    run = Recorder()
    # An unquoted YAML 0600 is the integer 384.
    apply_write_files("#cloud-config\nwrite_files:\n- {path: /a, owner: app, permissions: 0600}",
                         run)  # fmt: skip
    assert "chown app:app " in run.commands[0]
    assert "chmod 0600 " in run.commands[0]
    assert payload(run.commands[0]) == b""


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("b64", base64.b64encode),
        ("gzip", None),
        ("gz+b64", lambda b: base64.b64encode(gzip.compress(b))),
    ],
)
def test_encoded_content_is_decoded(encoding: str, encode) -> None:
    raw = b"\x00binary 'and' $dollars\n"
    if encode is None:  # gzip bytes straight in the YAML (a !!binary value)
        content: object = gzip.compress(raw)
    else:
        content = encode(raw).decode()
    run = Recorder()
    apply_write_files(user_data({"path": "/x", "content": content, "encoding": encoding}), run)
    assert payload(run.commands[0]) == raw


def test_several_files_in_order_and_a_failure_stops() -> None:
    data = user_data({"path": "/a", "content": "1"}, {"path": "/b", "content": "2"},
                     {"path": "/c", "content": "3"})  # fmt: skip
    run = Recorder()
    assert apply_write_files(data, run) == ["/a", "/b", "/c"]
    assert [payload(c) for c in run.commands] == [b"1", b"2", b"3"]

    failing = Recorder(fail_at=2)
    with pytest.raises(RuntimeError):
        apply_write_files(data, failing)
    assert len(failing.commands) == 2


def test_no_write_files_writes_nothing_and_bad_entries_are_refused() -> None:
    run = Recorder()
    assert apply_write_files("#cloud-config\nhostname: x\n", run) == []
    assert run.commands == []
    with pytest.raises(ConfigError, match="absolute path"):
        apply_write_files(user_data({"path": "relative/file", "content": "x"}), run)
    with pytest.raises(ConfigError, match="encoding"):
        apply_write_files(user_data({"path": "/x", "content": "x", "encoding": "zstd"}), run)


def state(root: Path) -> lc.State:
    s = lc.State("t", "10.9.8.0/24", "t-net", "prepared:x", "overlay2", str(root))
    for role in topology.DEPLOY_ORDER:
        s.containers[role] = lc.Container(role, f"t-{role}", ADDRESSES[role], 1024)
    return s


def env_of(document: dict) -> str:
    (entry,) = [e for e in document["write_files"] if e["path"] == topology.ENV_FILE]
    return entry["content"]


def test_plan_names_the_containers_addresses_and_no_static_network(tmp_path: Path) -> None:
    cloud = lc.ContainerCloud(tmp_path)
    plan = cloud.plan(state(tmp_path), role_settings={"producer": {"PRODUCER_RATE": "2"}})
    assert [b.role for b in plan.boots] == list(topology.DEPLOY_ORDER)
    boots = plan.by_role()
    assert boots["kafka"].hostname == "t-kafka"
    kafka = yaml.safe_load(boots["kafka"].user_data)
    assert "network" not in kafka and "ssh_authorized_keys" not in kafka
    # The deployment's credentials, made in its state folder, reach the server and its clients.
    creds = credentials.load(tmp_path / credentials.LOCAL_FILE)
    uri = topology.mongodb_uri(
        "10.9.8.10", creds.mongodb_user, creds.mongodb_password,
        tls_ca_file="/etc/appliance/tls/ca.pem",
    )  # fmt: skip
    assert f"MONGODB_URI={uri}\n" in env_of(kafka)
    # So do its CA and Kafka login, made there too.
    tls = transport.of_local_cloud(tmp_path)
    assert f"KAFKA_PASSWORD={tls.kafka_password}\n" in env_of(kafka)
    assert tls.authority.cert_pem.decode().splitlines()[1] in boots["producer"].user_data
    mongodb = env_of(yaml.safe_load(boots["mongodb"].user_data))
    assert f"MONGO_INITDB_ROOT_PASSWORD={creds.mongodb_password}\n" in mongodb
    assert "PRODUCER_RATE=2" in boots["producer"].user_data


def test_state_round_trip_and_how_to_reach_each_container(tmp_path: Path) -> None:
    cloud = lc.ContainerCloud(tmp_path)
    with pytest.raises(ConfigError, match="cloud --provider containers up"):
        cloud.require()
    cloud.save(state(tmp_path))
    assert cloud.require() == state(tmp_path)
    assert cloud.testinfra_host("kafka") == ("docker://t-kafka", {})
    uri = cloud.mongodb_uri(cloud.require())
    creds = credentials.load(tmp_path / credentials.LOCAL_FILE)
    assert uri == (
        f"mongodb://appliance:{creds.mongodb_password}@10.9.8.10:27017/"
        f"?authSource=admin&directConnection=true&tls=true&tlsCAFile={tmp_path}/tls/ca.pem"
    )


def test_prepare_without_the_tarballs_says_how_to_make_them(tmp_path: Path) -> None:
    (tmp_path / "ctr").mkdir()
    (tmp_path / "ctr" / "kafka.tar.gz").write_bytes(b"")
    cloud = lc.ContainerCloud(tmp_path / "cloud")
    with pytest.raises(
        ConfigError, match=r"producer, ml-server, consumers, mongodb .*make containers save"
    ):
        cloud.prepare("t", "10.9.8.0/24", containers_dir=tmp_path / "ctr")
    assert not (tmp_path / "cloud").exists()
