"""The ``docker`` CLI: one call with its errors as `StackError`, whether an engine answers, which
images are missing, a container's state and image, and its last log lines."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from appliance.ops.stack.model import LOG_TAIL_LINES, ContainerStatus, Stack, StackError


def docker(
    stack: Stack, *args: str, check: bool = True, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    command = [stack.docker, *args]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise StackError(
            f"`{stack.docker}` not found: install Docker (images/docker-engine.sh does)"
        ) from None
    except subprocess.TimeoutExpired:
        raise StackError(f"`{' '.join(command)}` did not finish in {timeout:.0f}s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise StackError(f"`{' '.join(command)}` failed (exit {result.returncode}): {detail}")
    return result


def engine_problem(stack: Stack) -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        result = docker(stack, "info", "--format", "{{.ServerVersion}}", check=False, timeout=20)
    except StackError as exc:
        return str(exc)
    if result.returncode != 0:
        return (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
    return None


def missing_images(stack: Stack) -> list[str]:
    return [
        image
        for image in stack.images()
        if docker(stack, "image", "inspect", image, check=False).returncode != 0
    ]


def inspect_container(stack: Stack, role: str) -> ContainerStatus:
    name = stack.container(role)
    result = docker(stack, "container", "inspect", name, check=False)
    if result.returncode != 0:
        return ContainerStatus(role, name, exists=False)
    info: dict[str, Any] = json.loads(result.stdout)[0]
    state = info.get("State", {})
    health = state.get("Health") or {}
    checks = health.get("Log") or []
    output = " ".join(str(checks[-1].get("Output", "")).split()) if checks else ""
    return ContainerStatus(
        role=role,
        name=name,
        exists=True,
        state=str(state.get("Status", "unknown")),
        health=str(health.get("Status", "-")),
        restarts=int(info.get("RestartCount", 0)),
        exit_code=int(state.get("ExitCode", 0)),
        image=str(info.get("Config", {}).get("Image", "")),
        health_output=output[:300],
        pid=int(state.get("Pid", 0)),
    )


def container_image_id(stack: Stack, role: str) -> str | None:
    result = docker(
        stack, "container", "inspect", "--format", "{{.Image}}", stack.container(role), check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def image_id(stack: Stack, image: str) -> str:
    return docker(stack, "image", "inspect", "--format", "{{.Id}}", image).stdout.strip()


def logs_tail(stack: Stack, role: str, lines: int = LOG_TAIL_LINES) -> str:
    result = docker(stack, "logs", "--tail", str(lines), stack.container(role), check=False)
    text = (result.stdout + result.stderr).strip() or "(no output)"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])
