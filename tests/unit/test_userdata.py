"""`appliance userdata`: the cloud-init user-data that brings each image up (boot contract)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance import cli
from appliance.cloud import credentials, topology, userdata
from appliance.config import ConfigError

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the cloud/infra extras")

ROOT = Path(__file__).resolve().parents[2]
CHECK_ENV = ROOT / "roles/appliance_env/files/check-env"
PEERS = {"kafka": "10.0.0.12", "mongodb": "10.0.0.10", "ml-server": "10.0.0.11"}
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


def test_the_mongodb_password_is_quoted_in_the_uri_and_the_file_is_root_only():
    text = userdata.render("kafka", PEERS, mongodb_user="app", mongodb_password="p@ss:w/rd #1")
    _, entry, settings = parse(text)
    assert settings["MONGODB_URI"] == (
        "mongodb://app:p%40ss%3Aw%2Frd%20%231@10.0.0.10:27017/?authSource=admin"
    )
    assert entry["permissions"] == "0600"
    _, _, mongo = parse(
        userdata.render("mongodb", {}, mongodb_user="app", mongodb_password="p@ss:w/rd #1")
    )
    assert mongo == {
        "MONGO_INITDB_ROOT_USERNAME": "app",
        "MONGO_INITDB_ROOT_PASSWORD": "p@ss:w/rd #1",
    }


def test_user_and_password_go_together(capsys, monkeypatch):
    monkeypatch.delenv("APPLIANCE_MONGODB_PASSWORD", raising=False)
    mongodb = ("mongodb", "--mongodb", "10.0.0.10")
    code, _, err = render_cli(capsys, *mongodb, "--mongodb-user", "app")
    assert code == 2 and "--mongodb-user and --mongodb-password go together" in err
    code, _, err = render_cli(capsys, *mongodb, "--mongodb-password", "x")
    assert code == 2 and "go together" in err
    monkeypatch.setenv("APPLIANCE_MONGODB_PASSWORD", "from-env")
    code, out, _ = render_cli(capsys, *mongodb, "--mongodb-user", "app")
    assert code == 0 and parse(out)[2]["MONGO_INITDB_ROOT_PASSWORD"] == "from-env"


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


def test_a_fixed_address_is_a_networkd_file_for_that_nic_and_applied_at_boot(tmp_path):
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest user@host\n")
    text = userdata.render(
        "kafka",
        PEERS,
        network=userdata.static_nic("10.213.57.12/24", "52:54:00:D5:39:0C"),
        ssh_keys=[userdata.read_public_key(str(key))],
    )
    document = yaml.safe_load(text)
    files = {f["path"]: f for f in document["write_files"]}
    nic = files[userdata.NETWORK_FILE]
    assert nic["permissions"] == "0644"
    assert "MACAddress=52:54:00:d5:39:0c\n" in nic["content"]
    assert "Address=10.213.57.12/24\n" in nic["content"]
    assert "RequiredForOnline=no" in nic["content"]
    assert document["runcmd"] == [["networkctl", "reload"]]
    assert document["ssh_authorized_keys"] == [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest user@host"
    ]
    # The env file is unchanged by it.
    assert files[topology.ENV_FILE]["permissions"] == "0600"


@pytest.mark.parametrize(
    ("address", "mac", "message"),
    [
        ("10.213.57.12/24", None, "go together"),
        ("10.213.57.12", "52:54:00:d5:39:0c", "give the prefix"),
        ("10.213.57.300/24", "52:54:00:d5:39:0c", "address/prefix"),
        ("10.213.57.12/24", "52:54:00:d5:39", "hex pairs"),
    ],
)
def test_a_bad_fixed_address_is_named(address, mac, message):
    with pytest.raises(ConfigError, match=message):
        userdata.static_nic(address, mac)


def test_a_key_file_that_is_no_public_key_is_refused(tmp_path):
    bad = tmp_path / "id"
    bad.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n")
    with pytest.raises(ConfigError, match="not one OpenSSH public key line"):
        userdata.read_public_key(str(bad))
    with pytest.raises(ConfigError, match="No such file"):
        userdata.read_public_key(str(tmp_path / "missing.pub"))


def test_by_default_both_ends_get_one_password_made_for_the_deployment(tmp_path, capsys):
    """Rendered one image at a time, as a user does: the kafka VM's consumers log in with what
    the mongodb VM's server was given, from a 0600 file made on the first render."""
    code, out, _ = render_cli(capsys, "mongodb", "--mongodb", "10.0.0.10")
    assert code == 0
    server = parse(out)[2]
    code, out, _ = render_cli(capsys, "kafka", "--kafka", "10.0.0.12", "--mongodb", "10.0.0.10",
                              "--ml-server", "10.0.0.11")  # fmt: skip
    assert code == 0
    uri = parse(out)[2]["MONGODB_URI"]
    saved = credentials.load(tmp_path / userdata.CREDENTIALS_FILE)
    assert server == {
        "MONGO_INITDB_ROOT_USERNAME": "appliance",
        "MONGO_INITDB_ROOT_PASSWORD": saved.mongodb_password,
        "MONGODB_TLS_CERT_KEY_FILE": "/etc/appliance/tls/mongodb.pem",
        "MONGODB_TLS_CA_FILE": "/etc/appliance/tls/ca.pem",
    }
    assert len(saved.mongodb_password) >= 32
    assert uri == topology.mongodb_uri(
        "10.0.0.10", "appliance", saved.mongodb_password, tls_ca_file="/etc/appliance/tls/ca.pem"
    )
    assert stat.S_IMODE((tmp_path / userdata.CREDENTIALS_FILE).stat().st_mode) == 0o600
    assert saved.mongodb_password not in capsys.readouterr().err


def test_no_mongodb_auth_is_asked_for_and_makes_no_credentials(tmp_path, capsys):
    code, out, _ = render_cli(capsys, "mongodb", "--no-mongodb-auth", "--no-tls")
    assert code == 0 and "MONGO_INITDB" not in out and "/etc/appliance/tls" not in out
    assert not (tmp_path / "build").exists()
    code, _, err = render_cli(capsys, "mongodb", "--no-mongodb-auth", "--mongodb-user", "a",
                              "--mongodb-password", "b")  # fmt: skip
    assert code == 2 and "contradict" in err


def test_credentials_come_from_the_file_named(tmp_path, capsys):
    path = tmp_path / "site.env"
    credentials.save(path, credentials.Credentials("ops", "from-file"))
    mongodb = ("mongodb", "--mongodb", "10.0.0.10")
    code, out, _ = render_cli(capsys, *mongodb, "--credentials", str(path))
    assert code == 0 and parse(out)[2]["MONGO_INITDB_ROOT_PASSWORD"] == "from-file"
    # The deployment's CA and Kafka login are made beside that file.
    assert (tmp_path / "site.env.tls" / "ca.key").exists()
    path.chmod(0o644)
    code, _, err = render_cli(capsys, *mongodb, "--credentials", str(path))
    assert code == 2 and "chmod 600" in err


def tls_files(text: str) -> dict[str, dict]:
    return {e["path"]: e for e in parse(text)[0]["write_files"] if "/tls/" in e["path"]}


def test_by_default_kafka_logs_in_over_tls_and_mongodb_speaks_tls_with_the_deployments_ca(
    tmp_path, capsys
):
    """Rendered one image at a time, as a user does: every VM trusts the one CA made for the
    deployment, the servers get certificates for the addresses their peers dial, and the kafka
    VM and the cameras share one Kafka login. The CA's key reaches no VM."""
    from cryptography import x509

    peers = ("--kafka", "10.0.0.12", "--mongodb", "10.0.0.10", "--ml-server", "10.0.0.11")
    rendered = {}
    for role in topology.ROLES:
        code, out, err = render_cli(capsys, role, *peers)
        assert code == 0, err
        rendered[role] = out
    folder = tmp_path / "build/deploy/appliance.tls"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    password = (folder / "kafka-password").read_text().strip()
    ca_pem, ca_key = (folder / "ca.pem").read_text(), (folder / "ca.key").read_text()
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    for role, text in rendered.items():
        assert ca_key not in text
        files = tls_files(text)
        assert all(e["owner"] == "root:root" and e["permissions"] == "0600" for e in files.values())
        expected = {"kafka": ["ca.pem", "kafka.pem"], "mongodb": ["ca.pem", "mongodb.pem"],
                    "producer": ["ca.pem"], "ml-server": []}[role]  # fmt: skip
        assert sorted(files) == [f"/etc/appliance/tls/{name}" for name in expected]
        if expected:
            assert files["/etc/appliance/tls/ca.pem"]["content"] == ca_pem
        for name, address in (("kafka.pem", "10.0.0.12"), ("mongodb.pem", "10.0.0.10")):
            if f"/etc/appliance/tls/{name}" in files:
                pem = files[f"/etc/appliance/tls/{name}"]["content"]
                cert = x509.load_pem_x509_certificates(pem.encode())[0]
                cert.verify_directly_issued_by(ca)
                names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                assert address in [str(n.value) for n in names.value]
    for role in ("kafka", "producer"):
        settings = parse(rendered[role])[2]
        assert settings["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert settings["KAFKA_PASSWORD"] == password
        assert settings["KAFKA_CA_FILE"] == "/etc/appliance/tls/ca.pem"
    assert parse(rendered["kafka"])[2]["KAFKA_ADVERTISED_LISTENERS"] == "SASL_SSL://10.0.0.12:9092"
    assert (
        "&tls=true&tlsCAFile=/etc/appliance/tls/ca.pem"
        in parse(rendered["kafka"])[2]["MONGODB_URI"]
    )
    assert password not in capsys.readouterr().err
    # The mongodb image's certificate needs the address the DB consumer dials.
    code, _, err = render_cli(capsys, "mongodb")
    assert code == 2 and "--mongodb is required for the mongodb image with TLS" in err
    assert "--no-tls" in err


def test_a_ca_brought_along_is_used_and_half_of_one_is_refused(tmp_path, capsys):
    from appliance.cloud import pki, transport

    folder = tmp_path / "build/deploy/appliance.tls"
    folder.mkdir(parents=True)
    mine = pki.new_authority("my site's CA")
    pki.write_authority(folder, mine)
    code, out, _ = render_cli(capsys, "producer", "--kafka", "10.0.0.12")
    assert code == 0
    assert tls_files(out)["/etc/appliance/tls/ca.pem"]["content"] == mine.cert_pem.decode()
    (folder / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"ca\.pem and ca\.key go together"):
        transport.load_or_create(folder)


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
