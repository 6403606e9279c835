"""`appliance userdata`'s secrets: the MongoDB login, the deployment's TLS CA and Kafka login."""

from __future__ import annotations

import stat

import pytest

from appliance.cloud import credentials, topology, userdata
from appliance.config import ConfigError
from tests.unit.test_userdata import PEERS, _in_tmp, parse, render_cli  # noqa: F401 (_in_tmp: autouse)


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
