"""The Kafka clients' login (Settings.kafka_options) and the deployment CA it trusts (pki)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from appliance.cloud import pki
from appliance.config import ConfigError, Settings


def test_plaintext_is_just_the_bootstrap_servers() -> None:
    assert Settings(kafka_bootstrap_servers="k:9092").kafka_options() == {
        "bootstrap_servers": "k:9092"
    }


def test_sasl_ssl_names_every_missing_setting() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_username="appliance")
    with pytest.raises(ConfigError, match="needs KAFKA_PASSWORD, KAFKA_CA_FILE"):
        settings.kafka_options()


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ConfigError, match="PLAINTEXT or SASL_SSL, got 'SSL'"):
        Settings(kafka_security_protocol="SSL").kafka_options()


def test_sasl_ssl_from_the_environment_and_the_password_kept_out_of_repr() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_USERNAME": "appliance",
            "KAFKA_PASSWORD": "pw-123",
            "KAFKA_CA_FILE": "/etc/appliance/ca.pem",
        }
    )
    options = settings.kafka_options()
    assert options["sasl_plain_password"] == "pw-123"
    assert options["ssl_cafile"] == "/etc/appliance/ca.pem"
    assert "pw-123" not in repr(settings)


def test_a_certificate_from_the_ca_verifies_for_its_hosts_only(tmp_path: Path) -> None:
    authority = pki.new_authority("test CA")
    server = pki.issue(authority, "kafka", ["127.0.0.1", "kafka.local"])
    keystore = pki.write_keystore(tmp_path / "kafka.pem", server, authority)
    cert, key = pki.write_authority(tmp_path, authority)
    for path in (keystore, cert, key):
        assert path.stat().st_mode & 0o777 == 0o600
    # Python's TLS stack (what kafka-python uses) loads the keystore and trusts the chain.
    context = ssl.create_default_context(cafile=str(cert))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(keystore)
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(server.cert_pem)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["kafka.local"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(authority.cert_pem))
    other = x509.load_pem_x509_certificate(pki.new_authority("another CA").cert_pem)
    with pytest.raises(ValueError):
        leaf.verify_directly_issued_by(other)
