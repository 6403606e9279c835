"""The services' state file: what `up` started (pids, addresses), read and written atomically."""

from __future__ import annotations

import json
from typing import Any

from appliance.ops.services.config import (
    ENV_STATE_DIR,
    STATE_FILE,
    STATE_FORMAT,
    ServiceError,
    ServicesConfig,
)


def read_state(config: ServicesConfig) -> dict[str, Any] | None:
    try:
        state = json.loads(config.state_file.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ServiceError(f"{config.state_file} is not valid JSON ({exc}); remove it") from None
    if state.get("format") != STATE_FORMAT:
        raise ServiceError(f"{config.state_file} was written by another version; remove it")
    return state


def write_state(config: ServicesConfig, state: dict[str, Any]) -> None:
    partial = config.state_file.with_suffix(".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    partial.replace(config.state_file)


def refuse_foreign_dir(config: ServicesConfig) -> None:
    """Never start in, or delete, a directory this tool did not create."""
    directory = config.state_dir
    if directory.exists() and not config.state_file.exists() and any(directory.iterdir()):
        raise ServiceError(
            f"{directory} exists, is not empty and holds no {STATE_FILE}: not using or removing "
            f"it; choose another directory with {ENV_STATE_DIR}=<dir>"
        )
