"""A small vocabulary for multi-host checks, after the NixOS test driver: start all, wait for a
unit, wait for a port, succeed or fail. A Machine is one image's host in a local deployment
(`appliance cloud`), a QEMU VM or a systemd container; commands run on it as root.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from appliance.cloud.local import Provider, healthy
from appliance.cloud.writefiles import write_file_command

SENT = re.compile(r"^sent (\d+), acknowledged (\d+), failed (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class ProducerRun:
    sent: int
    acknowledged: int
    failed: int


class Machine:
    def __init__(self, cloud: Provider, state: Any, role: str, address: str) -> None:
        self.cloud, self.state, self.role, self.address = cloud, state, role, address

    def __repr__(self) -> str:
        return f"Machine({self.role} at {self.address})"

    # -- commands ----------------------------------------------------------------------------

    def execute(self, command: str, timeout: float = 120) -> tuple[int, str]:
        result = self.cloud.run(self.role, command, timeout=timeout, check=False)
        return result.returncode, result.stdout + result.stderr

    def succeed(self, command: str, timeout: float = 120) -> str:
        rc, out = self.execute(command, timeout)
        assert rc == 0, f"{self.role}: `{command}` exited {rc}: {out[-2000:]}"
        return out

    def fail(self, command: str, timeout: float = 120) -> str:
        rc, out = self.execute(command, timeout)
        assert rc != 0, f"{self.role}: `{command}` succeeded but should have failed: {out[-500:]}"
        return out

    def wait_until(self, what: str, check, timeout: float = 600, interval: float = 5) -> Any:
        """Until ``check()`` returns something true; that value is returned."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except Exception as exc:  # the machine may be booting: try again
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"{self.role}: {what}: not within {timeout:.0f} s (last: {last!r})")

    def wait_until_succeeds(self, command: str, timeout: float = 600) -> str:
        def ok() -> str | None:
            rc, out = self.execute(command, 60)
            return out or "ok" if rc == 0 else None

        return self.wait_until(f"`{command}` succeeds", ok, timeout)

    # -- units, ports, files -----------------------------------------------------------------

    def unit_property(self, unit: str, name: str) -> str:
        return self.succeed(f"systemctl show -p {name} --value {unit}").strip()

    def wait_for_unit(self, unit: str, timeout: float = 900) -> None:
        self.wait_until_succeeds(f"systemctl is-active --quiet {unit}", timeout)

    def wait_healthy(self, timeout: float = 1200) -> str:
        """Every unit of the role active and each container healthy (Docker's health check)."""

        def check() -> str | None:
            ok, detail = healthy(self.cloud, self.role)
            return detail if ok else None

        return self.wait_until("its units active and containers healthy", check, timeout, 10)

    def listening(self, port: int) -> list[str]:
        """Local addresses something listens on at TCP ``port``."""
        out = self.succeed(f"ss -Htln 'sport = :{port}'")
        return [line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]

    def wait_for_open_port(self, port: int, timeout: float = 900) -> list[str]:
        return self.wait_until(f"a listener on {port}", lambda: self.listening(port), timeout)

    def reaches(self, address: str, port: int) -> bool:
        rc, _ = self.execute(f"timeout 5 bash -c '</dev/tcp/{address}/{port}'", 30)
        return rc == 0

    def journal(self, unit: str, this_boot: bool = False) -> str:
        boot = " -b" if this_boot else ""
        return self.succeed(f"journalctl --no-pager -o cat{boot} -u {unit}", 60)

    def write_file(self, path: str, content: str, mode: str = "0600", owner: str = "root") -> None:
        """As cloud-init's write_files does (appliance-env.path sees the change)."""
        entry = {"path": path, "content": content, "permissions": mode, "owner": owner}
        self.succeed(write_file_command(entry))

    # -- power -------------------------------------------------------------------------------

    def crash(self) -> None:
        """Power off hard: no shutdown, nothing flushed inside."""
        self.cloud.crash(self.state, self.role)

    def shutdown(self) -> None:
        self.cloud.shutdown(self.state, self.role)

    def start(self) -> None:
        """Boot again from the same disk."""
        self.cloud.start(self.state, self.role)

    def reboot(self) -> None:
        """A clean power-off, then a boot from the same disk."""
        self.shutdown()
        self.start()

    # -- the producer's own counts -----------------------------------------------------------

    def producer_runs(self) -> list[ProducerRun]:
        """Each camera run's closing line in the unit's journal: what Kafka acknowledged."""
        text = self.journal("appliance-producer.service")
        return [ProducerRun(*map(int, m.groups())) for m in SENT.finditer(text)]
