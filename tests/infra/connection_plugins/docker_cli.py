"""Ansible connection through the docker CLI, for the role tests in systemd containers.

ansible-core has no Docker connection (community.docker does, but Galaxy is out of reach here), and
SSH will not do: sysprep removes the host keys and authorized_keys the second run would need.
"""

from __future__ import annotations

import subprocess

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: docker_cli
short_description: Run tasks in a running Docker container with docker exec and docker cp
description:
  - Test-only connection used by tests/infra/run.sh.
author: appliance
options:
  remote_addr:
    description: The container's name or ID.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
"""


class Connection(ConnectionBase):
    transport = "docker_cli"
    has_pipelining = True

    def _connect(self):
        self._connected = True
        return self

    def _container(self) -> str:
        return self.get_option("remote_addr")

    def exec_command(self, cmd, in_data=None, sudoable=False):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        argv = ["docker", "exec", "-i", self._container(), "/bin/sh", "-c", cmd]
        proc = subprocess.run(argv, input=in_data, capture_output=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        proc = subprocess.run(
            ["docker", "cp", in_path, f"{self._container()}:{out_path}"],
            capture_output=True,
            check=False,
        )
        if proc.returncode:
            raise AnsibleConnectionFailure(f"docker cp to {out_path}: {proc.stderr.decode()}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        proc = subprocess.run(
            ["docker", "cp", f"{self._container()}:{in_path}", out_path],
            capture_output=True,
            check=False,
        )
        if proc.returncode:
            raise AnsibleConnectionFailure(f"docker cp from {in_path}: {proc.stderr.decode()}")

    def close(self):
        self._connected = False
