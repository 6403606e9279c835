"""cloud-init's write_files, applied where no cloud-init runs (the containers provider, tests).

A user-data's files reach a host the way cloud-init writes them: decoded (text, b64, gzip), with
their owner and mode, written beside the target and renamed onto it.
"""

from __future__ import annotations

import base64
import gzip
import posixpath
import shlex
from collections.abc import Callable

import yaml

from appliance.config import ConfigError


def decode_content(entry: dict) -> bytes:
    """An entry's content, decoded as cloud-init does (encoding b64, gz, or gz+b64)."""
    content = entry.get("content", "")
    data = content.encode() if isinstance(content, str) else bytes(content)
    encoding = str(entry.get("encoding", "text")).lower()
    if encoding in ("b64", "base64", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        data = base64.b64decode(data)
    if encoding in ("gz", "gzip", "gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        data = gzip.decompress(data)
    elif encoding not in ("text", "text/plain", "b64", "base64"):
        raise ConfigError(f"write_files {entry.get('path')}: unknown encoding {encoding!r}")
    return data


def write_file_command(entry: dict) -> str:
    """One shell command that writes one write_files entry, as root.

    The content travels base64-encoded, so any byte (quotes, ``$``, newlines) arrives as is. It is
    written beside the target and renamed onto it, with its mode and owner already set: a watcher
    (appliance-env.path) never sees a half-written file or one with the wrong mode.
    """
    path = entry.get("path")
    if not path or not str(path).startswith("/"):
        raise ConfigError(f"write_files: an entry needs an absolute path, not {path!r}")
    path = str(path)
    # cloud-init's defaults: root:root, 0644; an unquoted YAML 0600 arrives as the int 384.
    permissions = entry.get("permissions", "0644")
    mode = permissions if isinstance(permissions, int) else int(str(permissions), 8)
    user, _, group = str(entry.get("owner", "root:root")).partition(":")
    group = group or user
    payload = base64.b64encode(decode_content(entry)).decode()
    directory = posixpath.dirname(path)
    target = shlex.quote(path)
    owner = shlex.quote(f"{user}:{group}")
    steps = [
        "set -e",
        f"mkdir -p {shlex.quote(directory)}",
        f"tmp=$(mktemp {shlex.quote(posixpath.join(directory, '.write_files.XXXXXX'))})",
        f'printf %s {shlex.quote(payload)} | base64 -d >"$tmp"',
        f'chown {owner} "$tmp"',
        f'chmod {mode:04o} "$tmp"',
    ]
    if entry.get("append"):
        # cloud-init appends to the existing file and still sets its mode and owner.
        steps += [f'cat "$tmp" >>{target}', 'rm -f "$tmp"', f"chown {owner} {target}",
                  f"chmod {mode:04o} {target}"]  # fmt: skip
    else:
        steps.append(f'mv -f "$tmp" {target}')
    return "; ".join(steps)


def apply_write_files(user_data: str, run: Callable[[str], object]) -> list[str]:
    """Write each of the user-data's write_files entries through ``run`` (a root shell command,
    raising when it fails); returns the paths written, in order.

    ``defer`` makes no difference here: every file is written after the boot's units exist.
    """
    document = yaml.safe_load(user_data) or {}
    if not isinstance(document, dict):
        raise ConfigError("user-data is not a #cloud-config mapping")
    written = []
    for entry in document.get("write_files") or []:
        run(write_file_command(entry))
        written.append(str(entry["path"]))
    return written
