"""`appliance userdata`: the cloud-init user-data that brings each image up (boot contract)."""

from __future__ import annotations

import os
import stat

import pytest

from appliance import cli
from appliance.cloud import topology, userdata
from appliance.config import ConfigError

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the cloud/infra extras")

PEERS = {"kafka": "10.0.0.12", "mongodb": "10.0.0.10", "ml-server": "10.0.0.11"}


def parse(text: str) -> tuple[dict, dict, dict[str, str]]:
    """(the whole document, the env file entry, the settings in it)."""
    assert text.startswith("#cloud-config\n"), "cloud-init ignores user-data without this line"
    document = yaml.safe_load(text)
    (entry,) = [e for e in document["write_files"] if e["path"] == topology.ENV_FILE]
    settings = {}
    for line in entry["content"].splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    return document, entry, settings


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # The command line keeps the deployment's credentials under ./build/deploy.
    monkeypatch.chdir(tmp_path)


def render_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["userdata", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("role", list(topology.ROLES))
def test_every_image_renders_valid_cloud_config(role):
    peers = {name: PEERS[name] for name in topology.ROLES[role].peers}
    document, entry, _ = parse(userdata.render(role, peers))
    assert entry["path"] == "/etc/appliance/appliance.env"
    assert entry["owner"] == "root:root"
    # A string, as cloud-init wants it (an int 600 would be read as decimal).
    assert entry["permissions"] == "0600"
    assert int(entry["permissions"], 8) == 0o600
    assert document["hostname"] == f"appliance-{role}"
    assert document["final_message"].startswith(f"appliance {role}: cloud-init finished")


def test_kafka_gets_every_peer_and_advertises_its_own_address():
    _, _, settings = parse(userdata.render("kafka", PEERS))
    assert settings == {
        "KAFKA_BOOTSTRAP_SERVERS": "10.0.0.12:9092",
        "KAFKA_ADVERTISED_LISTENERS": "PLAINTEXT://10.0.0.12:9092",
        "MONGODB_URI": "mongodb://10.0.0.10:27017",
        "INFERENCE_URL": "http://10.0.0.11:8000",
    }


def test_producer_gets_the_broker():
    _, _, settings = parse(userdata.render("producer", {"kafka": "kafka.example.org"}))
    assert settings == {"KAFKA_BOOTSTRAP_SERVERS": "kafka.example.org:9092"}


def test_servers_need_no_peer_and_ignore_given_ones():
    for role in ("ml-server", "mongodb"):
        _, _, settings = parse(userdata.render(role, {}))
        assert settings == {}
        _, _, settings = parse(userdata.render(role, PEERS))
        assert settings == {}


def test_ipv6_peers_are_bracketed():
    _, _, settings = parse(userdata.render("kafka", {**PEERS, "kafka": "fd00::12"}))
    assert settings["KAFKA_BOOTSTRAP_SERVERS"] == "[fd00::12]:9092"
    assert settings["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://[fd00::12]:9092"


@pytest.mark.parametrize(
    ("role", "given", "missing"),
    [
        ("producer", {}, "--kafka"),
        ("kafka", {"mongodb": "10.0.0.10", "ml-server": "10.0.0.11"}, "--kafka"),
        ("kafka", {"kafka": "10.0.0.12", "ml-server": "10.0.0.11"}, "--mongodb"),
        ("kafka", {"kafka": "10.0.0.12", "mongodb": "10.0.0.10"}, "--ml-server"),
    ],
)
def test_a_missing_peer_is_named(role, given, missing):
    with pytest.raises(ConfigError, match=f"^{missing} is required for the {role} image"):
        userdata.render(role, given)


def test_the_cli_names_the_missing_peer_and_exits_2(capsys):
    code, out, err = render_cli(capsys, "kafka", "--kafka", "10.0.0.12", "--ml-server", "10.0.0.11")
    assert code == 2
    assert out == ""
    assert "--mongodb is required for the kafka image" in err
    assert "writes to MongoDB" in err


@pytest.mark.parametrize("bad", ["bad host!", "10.0.0.300", "-kafka", "a..b", "http://x"])
def test_a_malformed_address_is_refused(bad):
    with pytest.raises(ConfigError, match=r"--kafka: .* is not an IP address or host name"):
        userdata.render("producer", {"kafka": bad})


def test_extra_settings_are_added_and_checked(capsys):
    code, out, _ = render_cli(
        capsys,
        "producer",
        "--kafka",
        "10.0.0.12",
        "--set",
        "DEVICE_ID=lobby",
        "--set",
        "TOPIC_IMAGES=cams",
        "--no-tls",
    )
    assert code == 0
    assert parse(out)[2] == {
        "KAFKA_BOOTSTRAP_SERVERS": "10.0.0.12:9092",
        "DEVICE_ID": "lobby",
        "TOPIC_IMAGES": "cams",
    }
    for bad in ("NOEQUALS", "1BAD=x", "WITH SPACE=x"):
        code, _, err = render_cli(capsys, "producer", "--kafka", "10.0.0.12", "--set", bad)
        assert code == 2 and "expected KEY=VALUE" in err
    with pytest.raises(ConfigError, match="DEVICE_ID: the value must be one line"):
        userdata.render("producer", PEERS, settings={"DEVICE_ID": "a\nKAFKA_BOOTSTRAP_SERVERS=x"})


def test_a_bad_hostname_is_refused():
    with pytest.raises(ConfigError, match="--hostname"):
        userdata.render("mongodb", {}, hostname="Not_Valid")


def test_output_file_is_written_private(tmp_path, capsys):
    target = tmp_path / "kafka.yaml"
    code, out, _ = render_cli(
        capsys,
        "kafka",
        "--kafka",
        "10.0.0.12",
        "--mongodb",
        "10.0.0.10",
        "--ml-server",
        "10.0.0.11",
        "--output",
        str(target),
    )
    assert code == 0 and out == ""
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert parse(target.read_text())[2]["INFERENCE_URL"] == "http://10.0.0.11:8000"
