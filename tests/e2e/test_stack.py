"""`appliance stack` without Docker: the env file, the `docker run` arguments, the cameras' source.

These need no engine; the containerised run itself is test_containers.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ConfigError
from appliance.ops import stack as st

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "images" / "appliance.env.example"


def test_env_file_is_read_as_docker_reads_it() -> None:
    text = "# comment\n\nA=1\nB=two words = fine\nC=\n  D=x\nFROM_HOST\nMISSING\n"
    values = st.parse_env_file(text, {"FROM_HOST": "here"})
    assert values == {"A": "1", "B": "two words = fine", "C": "", "D": "x", "FROM_HOST": "here"}


def test_env_file_rejects_a_line_that_is_no_setting() -> None:
    with pytest.raises(ConfigError, match="line 2"):
        st.parse_env_file("A=1\nnot a setting\n", {})


def test_example_renders_with_the_local_peers(tmp_path: Path) -> None:
    out = st.write_env(EXAMPLE, tmp_path / "appliance.env", st.LOCAL_PEERS)
    values = st.parse_env_file(out.read_text(), {})
    for name, value in st.LOCAL_PEERS.items():
        assert values[name] == value
    # Everything else in the example survives, comments included.
    assert values["TOPIC_DLQ"] == "images.dlq"
    assert out.read_text().startswith("# /etc/appliance/appliance.env")


def test_render_adds_settings_the_template_lacks() -> None:
    text = st.render_env("A=1\n# B=2\n", {"A": "9", "B": "3"})
    assert st.parse_env_file(text, {}) == {"A": "9", "B": "3"}


def test_a_missing_peer_is_named(tmp_path: Path) -> None:
    path = tmp_path / "appliance.env"
    path.write_text("KAFKA_BOOTSTRAP_SERVERS=kafka:9092\nMONGODB_URI=mongodb://m:27017\n")
    with pytest.raises(ConfigError, match="INFERENCE_URL is not set"):
        st.load_env(path)


def test_a_bad_number_is_named(tmp_path: Path) -> None:
    path = tmp_path / "appliance.env"
    peers = "\n".join(f"{k}={v}" for k, v in st.LOCAL_PEERS.items())
    path.write_text(peers + "\nDB_BATCH_SIZE=lots\n")
    with pytest.raises(ConfigError, match="DB_BATCH_SIZE"):
        st.load_env(path)


def test_run_arguments_use_only_the_env_file_and_local_overrides() -> None:
    stack = st.Stack(project="p", tag="1.2.3", env_file=Path("/x/appliance.env"))
    consumer = next(s for s in st.SERVICES if s.role == "consume-db")
    args = st.run_arguments(stack, consumer, {}, [])
    assert args[:3] == ["run", "--detach", "--name"]
    assert args[3] == "p-consume-db"
    assert args[args.index("--env-file") + 1] == "/x/appliance.env"
    assert args[args.index("--network-alias") + 1] == "consume-db"
    assert args[args.index("--restart") + 1] == "unless-stopped"
    assert "--env" not in args
    assert args[-3:] == ["appliance/consumers:1.2.3", "appliance", "consume-db"]


def test_services_keep_their_data_in_named_volumes() -> None:
    stack = st.Stack(project="p")
    kafka = next(s for s in st.SERVICES if s.role == "kafka")
    args = st.run_arguments(stack, kafka, {}, [])
    assert "p-kafka-data:/var/lib/kafka" in args


def test_a_local_source_is_mounted_read_only(tmp_path: Path) -> None:
    archive = tmp_path / "images.tar.gz"
    archive.write_bytes(b"")
    env, mounts = st.producer_options(str(archive), count=5, rate=2.5, devices=2)
    assert env == {
        "PRODUCER_SOURCE": "/data/images.tar.gz",
        "PRODUCER_COUNT": "5",
        "PRODUCER_RATE": "2.5",
        "PRODUCER_DEVICES": "2",
    }
    assert mounts == [f"{archive.resolve()}:/data/images.tar.gz:ro"]


def test_cifar10_is_passed_through() -> None:
    env, mounts = st.producer_options("cifar10")
    assert env == {"PRODUCER_SOURCE": "cifar10"} and mounts == []


def test_counts_read_as_lines() -> None:
    counts = st.Counts(images=5, stored=5, labelled=4, lag={"g": 1}, errors=["boom"],
                       quality={"resnet50-b": [3, 4], "resnet50-a": [0, 0]})  # fmt: skip
    assert counts.lines() == [
        "images: 5 in Kafka, 5 stored, 4 labelled, 0 dead-lettered (0 prediction records)",
        "consumer lag: g 1",
        "labels match ground truth: 3 of 4 (75.0%), model resnet50-b",
        "  (boom)",
    ]


def test_the_stacks_login_and_certificates_are_made_once_and_kept_private(tmp_path: Path) -> None:
    from cryptography import x509

    folder = st.tls.folder_for(tmp_path / "appliance.env")
    login = st.tls.load_or_create(folder)
    again = st.tls.load_or_create(folder)
    assert again.password == login.password and len(login.password) >= 32
    assert again.keystore.read_bytes() == login.keystore.read_bytes()
    assert again.mongodb_keystore.read_bytes() == login.mongodb_keystore.read_bytes()
    assert folder.stat().st_mode & 0o777 == 0o700
    for name in ("kafka-password", "ca.key", "kafka.pem", "mongodb.pem"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    # Each server's certificate names it on the stack's network, signed by the stack's CA.
    ca = x509.load_pem_x509_certificate(login.ca_file.read_bytes())
    for path, host in ((login.keystore, "kafka"), (login.mongodb_keystore, "mongodb")):
        cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert host in [str(n.value) for n in names]
    # The certificate is public (the containers' own user reads it); its key stays 0600.
    assert login.ca_file.stat().st_mode & 0o777 == 0o644
    assert login.password not in repr(login)


def test_sasl_ssl_env_mounts_each_container_only_what_it_needs(tmp_path: Path) -> None:
    env_file = tmp_path / "appliance.env"
    login = st.tls.load_or_create(st.tls.folder_for(env_file))
    settings = st.local_settings(None, login)
    assert settings["KAFKA_ADVERTISED_LISTENERS"] == "SASL_SSL://kafka:9092"
    st.write_env(EXAMPLE, env_file, settings)
    values = st.load_env(env_file)
    assert settings["MONGODB_URI"].endswith("?tls=true&tlsCAFile=/etc/appliance/tls/ca.pem")
    folder = login.folder.resolve()
    ca = f"{folder}/ca.pem:/etc/appliance/tls/ca.pem:ro"
    keystore = f"{folder}/kafka.pem:/etc/appliance/tls/kafka.pem:ro"
    mongodb = f"{folder}/mongodb.pem:/etc/appliance/tls/mongodb.pem:ro"
    assert st.tls.mounts(values, env_file, "kafka") == [ca, keystore]
    assert st.tls.mounts(values, env_file, "mongodb") == [ca, mongodb]
    for role in ("consume-db", "consume-inference", "producer"):
        assert st.tls.mounts(values, env_file, role) == [ca]
    assert st.tls.mounts(values, env_file, "ml-server") == []
    # The CA's key is never mounted anywhere.
    assert not any("ca.key" in m for r in ("kafka", "producer")
                   for m in st.tls.mounts(values, env_file, r))  # fmt: skip
    plain = {**values, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "MONGODB_TLS_CERT_KEY_FILE": ""}
    assert st.tls.mounts(plain, env_file, "kafka") == []


def test_a_missing_tls_file_is_named_not_mounted_as_a_folder(tmp_path: Path) -> None:
    env_file = tmp_path / "appliance.env"
    login = st.tls.load_or_create(st.tls.folder_for(env_file))
    login.keystore.unlink()
    values = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    with pytest.raises(ConfigError, match=r"kafka\.pem is missing: `appliance stack env"):
        st.tls.mounts(values, env_file, "kafka")
