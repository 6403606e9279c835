"""A deployment's MongoDB credentials file: made private, reused, refused if others can read it."""

from __future__ import annotations

import stat

import pytest

from appliance.cloud import credentials
from appliance.config import ConfigError


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_made_once_private_then_reused(tmp_path):
    path = tmp_path / "deploy" / "x.credentials.env"
    first = credentials.load_or_create(path)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert first.mongodb_user == credentials.USER
    assert credentials.load_or_create(path) == first
    # Another deployment gets another password.
    assert credentials.load_or_create(tmp_path / "y.env") != first


def test_the_password_never_shows_in_a_repr(tmp_path):
    creds = credentials.load_or_create(tmp_path / "c.env")
    assert creds.mongodb_password not in repr(creds)
    assert creds.mongodb_password not in str([creds])


def test_a_file_others_can_read_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "c.env"
    credentials.save(path, credentials.Credentials("u", "p"))
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"mode 0640: chmod 600 .*c\.env"):
        credentials.load(path)


def test_saving_over_a_readable_file_makes_it_private(tmp_path):
    path = tmp_path / "c.env"
    path.write_text("old\n")
    path.chmod(0o644)
    credentials.save(path, credentials.Credentials("u", "p"))
    assert mode(path) == 0o600 and credentials.load(path).mongodb_password == "p"


def test_an_incomplete_file_says_what_it_needs(tmp_path):
    path = tmp_path / "c.env"
    path.write_text("APPLIANCE_MONGODB_USER=u\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="APPLIANCE_MONGODB_PASSWORD="):
        credentials.load(path)


@pytest.mark.parametrize(
    ("user", "password", "no_auth", "expected"),
    [
        ("u", "p", False, credentials.Credentials("u", "p")),
        (None, None, True, None),
    ],
)
def test_resolve_takes_what_the_command_line_names(tmp_path, user, password, no_auth, expected):
    assert credentials.resolve(user, password, tmp_path / "c.env", no_auth) == expected
    assert not (tmp_path / "c.env").exists()


@pytest.mark.parametrize(
    ("user", "password", "no_auth", "message"),
    [
        ("u", None, False, "go together"),
        (None, "p", False, "go together"),
        ("u", "p", True, "contradict"),
    ],
)
def test_resolve_refuses_half_or_contradictory_asks(tmp_path, user, password, no_auth, message):
    with pytest.raises(ConfigError, match=message):
        credentials.resolve(user, password, tmp_path / "c.env", no_auth)
