"""The env file every container gets (``--env-file``): parse it as Docker does, check the settings
the containers need, render it from the example with overrides, write it and load it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from appliance.cloud import credentials
from appliance.config import ConfigError, Settings
from appliance.ops.stack.model import ENV_LINE, REQUIRED_SETTINGS


def parse_env_file(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """KEY=VALUE lines as `docker run --env-file` reads them (a bare KEY takes our value)."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip()
        if not line or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        if match is None:
            raise ConfigError(f"env file line {number} is not KEY=VALUE: {raw!r}")
        name, value = match.group(1), match.group(2)
        if value is None:
            if name in env:
                values[name] = env[name]
            continue
        values[name] = value
    return values


def check_env(values: Mapping[str, str], path: Path) -> None:
    """The settings every container needs, and valid numbers, or a message naming the setting."""
    for name in REQUIRED_SETTINGS:
        if not values.get(name):
            raise ConfigError(f"{path}: {name} is not set")
    try:
        Settings.from_env(values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def render_env(template: str, overrides: Mapping[str, str]) -> str:
    """The template with each overridden setting's value replaced (or added at the end)."""
    pending = dict(overrides)
    lines = []
    for line in template.splitlines():
        match = ENV_LINE.match(line)
        if match and match.group(1) in pending:
            name = match.group(1)
            line = f"{name}={pending.pop(name)}"
        lines.append(line)
    if pending:
        lines.append("")
        lines.append("# Added by `appliance stack env`.")
        lines += [f"{name}={value}" for name, value in pending.items()]
    return "\n".join(lines) + "\n"


def write_env(template: Path, out: Path, overrides: Mapping[str, str]) -> Path:
    text = render_env(template.read_text(), overrides)
    check_env(parse_env_file(text, {}), out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    credentials.write_private(partial, text)  # it can hold MongoDB's password
    partial.replace(out)
    return out


def load_env(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"env file {path} not found: `make up` renders it, or run "
            f"`appliance stack env --out {path}`"
        ) from None
    values = parse_env_file(text)
    check_env(values, path)
    return values
