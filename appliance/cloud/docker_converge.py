"""An image's playbook converged into a running container over the docker CLI, as
tests/infra/run.sh does it (its docker_cli connection plugin): the bake step of the containers
provider, with the same variables a Packer bake passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from appliance.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "tests" / "infra"
IMAGE_PREFIX = "appliance"
CONVERGE_TIMEOUT = 1800


def pyproject_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


def converge(
    name: str, playbook: Path, logfile: Path, driver: str, extra: dict[str, object]
) -> bool:
    """ansible-playbook over the docker CLI (tests/infra/connection_plugins), as run.sh."""
    ansible = Path(sys.executable).parent / "ansible-playbook"
    if not ansible.exists():
        raise ConfigError(f"{ansible} is missing: make infra-venv")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CONNECTION_PLUGINS": str(INFRA / "connection_plugins"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{ansible.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    variables = {
        "appliance_image_prefix": IMAGE_PREFIX,
        "appliance_version": pyproject_version(),
        "docker_storage_driver": driver,
        # sysprep readies a disk for snapshotting (machine-id, host keys, apt lists gone);
        # here the converged container itself boots, so there is nothing to snapshot.
        "appliance_sysprep": False,
        **extra,
    }
    with logfile.open("w") as f:
        result = subprocess.run(
            [str(ansible), "-i", f"{name},", "-c", "docker_cli",
             "-e", f"@{INFRA / 'vars.yml'}", "-e", json.dumps(variables), str(playbook)],
            cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=CONVERGE_TIMEOUT,
            check=False,
        )  # fmt: skip
    return result.returncode == 0
