"""A deployment's MongoDB credentials: made once, kept in a root-only file on the machine that
deploys, and given to the VMs only through their user-data (never baked into an image).

The file is KEY=VALUE lines, so a shell can source it:

    APPLIANCE_MONGODB_USER=appliance
    APPLIANCE_MONGODB_PASSWORD=...

Rotating the password: write a new one here (or delete the file and render again), render and
apply the new user-data, and restart the units (see the README).
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from appliance.config import ConfigError

USER = "appliance"
USER_KEY = "APPLIANCE_MONGODB_USER"
PASSWORD_KEY = "APPLIANCE_MONGODB_PASSWORD"
# URL-safe: the password goes into MONGODB_URI as is, and into an env file, one line.
PASSWORD_BYTES = 24


@dataclass(frozen=True)
class Credentials:
    mongodb_user: str
    mongodb_password: str

    def __repr__(self) -> str:  # never print the password, even in a traceback
        return f"Credentials(mongodb_user={self.mongodb_user!r}, mongodb_password='***')"


def new(user: str = USER) -> Credentials:
    return Credentials(user, secrets.token_urlsafe(PASSWORD_BYTES))


def require_private(
    path: Path, what: str = "holds a password", remedy: str = "change the password"
) -> Path:
    """``path``, or ConfigError saying how to fix it if others may read it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} {what} but is mode {mode:04o}: chmod 600 {path}, and {remedy} if others "
            "may have read it"
        )
    return path


def load(path: Path) -> Credentials:
    """The credentials in ``path``; ConfigError if it is readable by others or incomplete."""
    require_private(path)
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    user, password = values.get(USER_KEY), values.get(PASSWORD_KEY)
    if not user or not password:
        raise ConfigError(f"{path} needs {USER_KEY}= and {PASSWORD_KEY}= lines")
    return Credentials(user, password)


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, mode 0600 from the first byte (never briefly readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def save(path: Path, credentials: Credentials) -> None:
    """Written private (write_private), in a 0700 folder if new."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(
        path,
        "# One deployment's MongoDB credentials, made by `appliance`: keep them private.\n"
        f"{USER_KEY}={credentials.mongodb_user}\n"
        f"{PASSWORD_KEY}={credentials.mongodb_password}\n",
    )


def load_or_create(path: Path) -> Credentials:
    """The deployment's credentials: those in ``path``, or new ones saved there."""
    if path.exists():
        return load(path)
    credentials = new()
    save(path, credentials)
    return credentials


def resolve(
    user: str | None, password: str | None, path: Path, no_auth: bool = False
) -> Credentials | None:
    """What a command line asks for: the user and password it names (both, or ConfigError), no
    authentication with ``no_auth``, else the deployment's file at ``path`` (made if missing)."""
    if user or password:
        if no_auth:
            raise ConfigError("--no-mongodb-auth and a MongoDB user or password contradict")
        if not (user and password):
            raise ConfigError("--mongodb-user and --mongodb-password go together")
        return Credentials(user, password)
    return None if no_auth else load_or_create(path)


# In a local deployment's state folder (`appliance cloud`): made at its first `up`.
LOCAL_FILE = "credentials.env"


def of_local_cloud(root: Path) -> Credentials:
    return load_or_create(root / LOCAL_FILE)


def as_options(creds: Credentials | None) -> dict[str, str | None]:
    """The keyword arguments `userdata.render` and `plan.make_plan` take."""
    return {
        "mongodb_user": creds.mongodb_user if creds else None,
        "mongodb_password": creds.mongodb_password if creds else None,
    }
