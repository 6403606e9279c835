"""`appliance userdata`'s fixed address (a networkd file for that NIC) and its SSH keys."""

from __future__ import annotations

import pytest

from appliance.cloud import topology, userdata
from appliance.config import ConfigError
from tests.unit.test_userdata import PEERS, _in_tmp  # noqa: F401 (_in_tmp: autouse)

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the cloud/infra extras")


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
