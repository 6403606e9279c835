"""Systemd containers through the docker CLI: VM-like hosts for the containers provider.

A systemd container needs more than ``docker run`` gives (SYS_ADMIN, the host's cgroup tree, tmpfs
mounts, systemd's own stop signal; tests/infra/run.sh's options), and is up only once systemd says
so. Docker runs inside it, its containers counted against the outer one's memory limit.
"""

from __future__ import annotations

import subprocess
import time

# A container without systemd up after this long is broken.
SYSTEMD_TIMEOUT = 120


class DockerError(RuntimeError):
    pass


def docker(
    *args: str, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``docker ARGS``; a failure raises with docker's own message."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode:
        raise DockerError(f"docker {' '.join(args[:3])}: {result.stderr.strip()[-400:]}")
    return result


def cgroup_of(name: str) -> str:
    """A container's cgroup on this host, for its inner dockerd's cgroup parent: the inner
    containers then count against the outer one's memory limit. Under --cgroupns=host the inner
    dockerd would otherwise put them in the host's /docker, outside any limit."""
    ident = docker("container", "inspect", "--format", "{{.Id}}", name).stdout.strip()
    if docker("info", "--format", "{{.CgroupDriver}}").stdout.strip() == "systemd":
        return f"/system.slice/docker-{ident}.scope"
    return f"/docker/{ident}"


def run_systemd(name: str, image: str, options: list[str]) -> None:
    """A systemd container (tests/infra/run.sh's run_container options, and more), up."""
    docker("rm", "-f", "-v", name, check=False)
    docker(
        "run", "-d", "--name", name, "--hostname", name,
        "--cap-add", "SYS_ADMIN", "--cap-add", "NET_ADMIN",
        # docker exec into an inner container that runs as a user (mongodb's health check)
        # opens that process's /proc/PID/ns/*: without SYS_PTRACE, "error executing setns".
        "--cap-add", "SYS_PTRACE",
        "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
        "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
        # The inner dockerd's storage: a volume on the host's file system, kept across boots.
        "-v", "/var/lib/docker",
        # systemd halts on SIGRTMIN+3; SIGTERM (docker's default) only makes it re-execute.
        "--stop-signal", "SIGRTMIN+3",
        *options, image,
    )  # fmt: skip
    wait_systemd(name)


def wait_systemd(name: str) -> None:
    deadline = time.monotonic() + SYSTEMD_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        state = docker("exec", name, "systemctl", "is-system-running", check=False).stdout
        if state.strip() in ("running", "degraded"):
            return
        time.sleep(1)
    raise DockerError(f"{name}: systemd did not come up in {SYSTEMD_TIMEOUT} s ({state!r})")
