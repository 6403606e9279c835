"""The local provider: the four baked qcow2 images as QEMU VMs on one private switch.

Each VM has two NICs:
- ``private``: a port on one ``vde_switch`` (user space; no host interface, no bridge), the only
  network between the VMs. Fixed addresses from the plan, set by the user-data (systemd-networkd).
- ``admin``: QEMU's user network with ``restrict=on`` (the VM can reach no address outside) and
  SSH forwarded from 127.0.0.1 only, plus MongoDB's port on the mongodb VM, for the checks.

Disks are copy-on-write overlays of the newest bakes (build/images/manifest.json), so the images
are never changed and a powered-off VM boots again from its own disk. State, disks, seeds and
each VM's serial console live under build/cloud/.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.cloud import credentials, topology, transport, userdata
from appliance.cloud import plan as plans
from appliance.cloud.processes import alive, usage, wait_gone
from appliance.cloud.vmsizes import SIZES, emulation_settings
from appliance.config import ConfigError

log = logging.getLogger(__name__)

SUBNET = "10.213.57.0/24"
# Host part of each role's private address, and its NIC's MAC (locally administered range).
HOST_NUMBER = {"mongodb": 10, "ml-server": 11, "kafka": 12, "producer": 13}
SSH_PORT_BASE = 2310  # mongodb 2320, ml-server 2321, kafka 2322, producer 2323
MONGODB_FORWARD_PORT = 27117


@dataclass
class Vm:
    role: str
    address: str
    mac: str
    ssh_port: int
    memory_mib: int
    cpus: int
    image: str
    pid: int = 0
    first_boot: float = 0.0
    boots: int = 0


@dataclass
class State:
    name: str
    subnet: str
    accel: str
    switch_pid: int = 0
    vms: dict[str, Vm] = field(default_factory=dict)


def newest_bakes(manifest: Path) -> dict[str, Path]:
    """The newest qcow2 of each image in Packer's manifest."""
    if not manifest.is_file():
        raise ConfigError(f"{manifest} is missing: bake the images first (make images)")
    newest: dict[str, Path] = {}
    for build in json.loads(manifest.read_text())["builds"]:
        for f in build.get("files", []):
            path = Path(f["name"])
            if path.suffix == ".qcow2" and path.is_file():
                newest[build["custom_data"]["image"]] = path
    return newest


def check_subnet(subnet: str) -> ipaddress.IPv4Network:
    """The private subnet must overlap nothing this machine has an address or route in."""
    net = ipaddress.ip_network(subnet)
    used = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True).stdout)
    routes = json.loads(
        subprocess.run(["ip", "-j", "route"], capture_output=True, check=True).stdout
    )
    taken = [
        ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False)
        for link in used
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    ] + [ipaddress.ip_network(r["dst"]) for r in routes if r.get("dst", "default") != "default"]
    for other in taken:
        if net.overlaps(other):
            raise ConfigError(f"subnet {subnet} collides with {other} on this machine: --subnet")
    return net  # type: ignore[return-value]


class LocalCloud:
    """Start, stop and reach the VMs of one local deployment; its state is a JSON file."""

    def __init__(self, root: Path = Path("build/cloud"), accel: str = "tcg") -> None:
        self.root = root
        self.accel = accel
        self.state_file = root / "state.json"
        self.key = root / "ssh" / "id_ed25519"
        self.ssh_config = root / "ssh" / "config"
        self.switch = root / "switch"

    # -- state -------------------------------------------------------------------------------

    def load(self) -> State | None:
        if not self.state_file.is_file():
            return None
        data = json.loads(self.state_file.read_text())
        vms = {role: Vm(**vm) for role, vm in data.pop("vms").items()}
        return State(**data, vms=vms)

    def save(self, state: State) -> None:
        data = asdict(state)
        self.state_file.write_text(json.dumps(data, indent=2) + "\n")

    def require(self) -> State:
        state = self.load()
        if state is None:
            raise ConfigError(f"no local cloud under {self.root}: run `appliance cloud up` first")
        return state

    # -- plan --------------------------------------------------------------------------------

    def prepare(
        self, name: str, subnet: str, manifest: Path = Path("build/images/manifest.json")
    ) -> State:
        """The deployment's state: loaded, or new (addresses, sizes, the newest bakes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.ensure_key()
        state = self.load() or self.new_state(name, subnet, manifest)
        self.write_ssh_config(state)
        self.save(state)
        return state

    def new_state(self, name: str, subnet: str, manifest: Path) -> State:
        net = check_subnet(subnet)
        images = newest_bakes(manifest)
        missing = [role for role in topology.DEPLOY_ORDER if role not in images]
        if missing:
            raise ConfigError(
                f"no baked image for {', '.join(missing)} in {manifest}: "
                + " ".join(f"make image-{role}" for role in missing)
            )
        state = State(name, str(net), self.accel)
        for i, role in enumerate(topology.DEPLOY_ORDER):
            number = HOST_NUMBER[role]
            state.vms[role] = Vm(
                role=role,
                address=str(net.network_address + number),
                mac=f"52:54:00:d5:39:{number:02x}",
                ssh_port=SSH_PORT_BASE + 10 + i,
                memory_mib=SIZES[role].memory_mib,
                cpus=SIZES[role].cpus,
                image=str(images[role].resolve()),
            )
        return state

    def plan(self, state: State, **options: object) -> plans.Plan:
        net = ipaddress.ip_network(state.subnet)
        if state.accel == "tcg":
            settings, role_settings = emulation_settings(
                options.get("settings"),  # type: ignore[arg-type]
                options.get("role_settings"),  # type: ignore[arg-type]
            )
            options.update(settings=settings, role_settings=role_settings)
        return plans.make_plan(
            state.name,
            {role: vm.address for role, vm in state.vms.items()},
            network={
                role: userdata.StaticNic(vm.mac, f"{vm.address}/{net.prefixlen}")
                for role, vm in state.vms.items()
            },
            ssh_keys=[self.key.with_suffix(".pub").read_text()],
            **credentials.as_options(credentials.of_local_cloud(self.root)),
            tls=transport.of_local_cloud(self.root),
            **options,  # type: ignore[arg-type]
        )

    # -- machines ----------------------------------------------------------------------------

    def ensure_key(self) -> None:
        self.key.parent.mkdir(parents=True, exist_ok=True)
        if not self.key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "appliance-cloud", "-f",
                 str(self.key)],
                check=True,
            )  # fmt: skip

    def write_ssh_config(self, state: State) -> None:
        """One Host entry per role: `ssh -F build/cloud/ssh/config kafka`, testinfra alike."""
        lines = []
        for role, vm in state.vms.items():
            lines += [
                f"Host {role}",
                "  HostName 127.0.0.1",
                "  User debian",
                f"  Port {vm.ssh_port}",
                f"  IdentityFile {self.key.resolve()}",
                "  IdentitiesOnly yes",
                # Each boot of a throwaway VM makes new host keys.
                "  StrictHostKeyChecking no",
                "  UserKnownHostsFile /dev/null",
                "  LogLevel ERROR",
                "  ConnectTimeout 10",
                "  BatchMode yes",
                "  ServerAliveInterval 15",
                "",
            ]
        self.ssh_config.write_text("\n".join(lines))

    def ensure_switch(self, state: State) -> None:
        if state.switch_pid and alive(state.switch_pid):
            return
        shutil.rmtree(self.switch, ignore_errors=True)
        pidfile = self.root / "switch.pid"
        subprocess.run(
            ["vde_switch", "--daemon", "--sock", str(self.switch), "--pidfile",
             str(pidfile.resolve())],
            check=True,
        )  # fmt: skip
        # The daemon writes its pid file after it forked: give it a moment.
        deadline = time.monotonic() + 10
        while not pidfile.is_file() or not pidfile.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"vde_switch wrote no pid file {pidfile}")
            time.sleep(0.1)
        state.switch_pid = int(pidfile.read_text())
        log.info(
            "private switch %s (pid %d), subnet %s", self.switch, state.switch_pid, state.subnet
        )

    def vm_dir(self, role: str) -> Path:
        return self.root / role

    def exists(self, state: State, role: str) -> bool:
        return (self.vm_dir(role) / "disk.qcow2").is_file()

    def running(self, state: State, role: str) -> bool:
        pid = state.vms[role].pid
        return bool(pid) and alive(pid)

    def create(self, state: State, boot: plans.Boot) -> None:
        """A fresh overlay of the bake and a NoCloud seed with the plan's user-data."""
        vm = state.vms[boot.role]
        d = self.vm_dir(vm.role)
        shutil.rmtree(d, ignore_errors=True)  # an earlier deployment's console too
        (d / "seed").mkdir(parents=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", vm.image,
             str(d / "disk.qcow2")],
            check=True,
        )  # fmt: skip
        (d / "seed" / "meta-data").write_text(
            f"instance-id: {boot.hostname}-{int(time.time())}\nlocal-hostname: {boot.hostname}\n"
        )
        user_data = d / "seed" / "user-data"
        user_data.write_text(boot.user_data)
        user_data.chmod(0o600)
        subprocess.run(
            ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(d / "seed.iso"), "-V", "cidata",
             "-J", "-r", str(d / "seed")],
            check=True,
            capture_output=True,
        )  # fmt: skip
        vm.first_boot = 0.0
        vm.boots = 0
        self.save(state)

    def qemu_command(self, state: State, vm: Vm) -> list[str]:
        d = self.vm_dir(vm.role).resolve()
        forwards = f"hostfwd=tcp:127.0.0.1:{vm.ssh_port}-:22"
        if vm.role == "mongodb":
            forwards += f",hostfwd=tcp:127.0.0.1:{MONGODB_FORWARD_PORT}-:{topology.MONGODB_PORT}"
        return [
            "qemu-system-x86_64", "-name", f"{state.name}-{vm.role}",
            "-accel", state.accel,
            # The containers' numpy needs SSE4/AVX, which QEMU's default CPU model lacks. Without
            # MONITOR/MWAIT the guest idles with HLT: TCG runs MWAIT on a guest of 2+ vCPUs as a
            # busy loop, and an idle 2-vCPU VM then burned a whole host core.
            "-cpu", "max,-monitor", "-smp", str(vm.cpus), "-m", str(vm.memory_mib),
            "-drive", f"file={d / 'disk.qcow2'},if=virtio",
            "-drive", f"file={d / 'seed.iso'},media=cdrom,readonly=on",
            # NIC 1 (eth0): admin access from this machine, nothing out.
            "-netdev", f"user,id=admin,restrict=on,{forwards}",
            "-device", "virtio-net-pci,netdev=admin",
            # NIC 2 (eth1): the private network between the VMs.
            "-netdev", f"vde,id=private,sock={self.switch.resolve()}",
            "-device", f"virtio-net-pci,netdev=private,mac={vm.mac}",
            "-chardev", f"file,id=console,path={d / 'console.log'},append=on",
            "-serial", "chardev:console",
            "-display", "none", "-monitor", "none",
            "-daemonize", "-pidfile", str(d / "qemu.pid"),
        ]  # fmt: skip

    def start(self, state: State, role: str) -> None:
        """Power the VM on from its disk (a first boot, or a boot after power-off)."""
        vm = state.vms[role]
        if vm.pid and alive(vm.pid):
            return
        self.ensure_switch(state)
        pidfile = self.vm_dir(role) / "qemu.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run(self.qemu_command(state, vm), check=True)
        vm.pid = int(pidfile.read_text())
        vm.boots += 1
        if not vm.first_boot:
            vm.first_boot = time.time()
        self.save(state)
        log.info("%s: QEMU pid %d, %s on the private network (boot %d)", role, vm.pid,
                 vm.address, vm.boots)  # fmt: skip

    def crash(self, state: State, role: str) -> None:
        """Pull the plug: SIGKILL to QEMU, no shutdown, no sync inside the VM."""
        vm = state.vms[role]
        if vm.pid and alive(vm.pid):
            os.kill(vm.pid, signal.SIGKILL)
            wait_gone(vm.pid, 30)
        vm.pid = 0
        self.save(state)

    def shutdown(self, state: State, role: str, timeout: float = 300) -> None:
        """A clean power-off from inside; the plug is pulled if it takes longer than ``timeout``."""
        vm = state.vms[role]
        if vm.pid and alive(vm.pid):
            self.run(role, "systemctl poweroff", timeout=30, check=False)
            if not wait_gone(vm.pid, timeout):
                log.warning("%s: no power-off after %.0f s; killing QEMU", role, timeout)
        self.crash(state, role)

    def run(
        self, role: str, command: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``command`` as root on the VM (over SSH, through sudo)."""
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), role, "sudo sh -c " + shlex.quote(command)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def testinfra_host(self, role: str) -> tuple[str, dict[str, object]]:
        """What testinfra.get_host takes for this VM."""
        return f"ssh://{role}", {"ssh_config": str(self.ssh_config), "sudo": True}

    def mongodb_uri(self, state: State) -> str:
        """MongoDB on the mongodb VM, from this machine (its forwarded port)."""
        creds = credentials.of_local_cloud(self.root)
        return topology.mongodb_uri(
            "127.0.0.1",
            creds.mongodb_user,
            creds.mongodb_password,
            port=MONGODB_FORWARD_PORT,
            direct=True,
            tls_ca_file=str(transport.local_ca_file(self.root)),
        )

    def describe(self, state: State) -> list[str]:
        lines = [f"local cloud {state.name}: QEMU ({state.accel}), private {state.subnet} on "
                 f"vde_switch {self.switch} (pid {state.switch_pid or '-'})"]  # fmt: skip
        for role, vm in state.vms.items():
            up = "running" if self.running(state, role) else "off"
            lines.append(
                f"  {role:9} {up:7} {vm.address:13} {vm.memory_mib} MiB x{vm.cpus}  ssh -F "
                f"{self.ssh_config} {role}  console {self.vm_dir(role) / 'console.log'}"
            )
            if up == "running":
                rss, cpu = usage(vm.pid)
                lines.append(f"  {'':9} QEMU uses {rss} MiB of host memory, {cpu:.0f} CPU s so far")
        return lines

    def down(self, name: str = "") -> None:
        """Kill the VMs and the switch; ``name`` is unused (a VM without state has no handle)."""
        state = self.load()
        if state is not None:
            for vm in state.vms.values():
                if vm.pid and alive(vm.pid):
                    os.kill(vm.pid, signal.SIGKILL)
                    wait_gone(vm.pid, 30)
            if state.switch_pid and alive(state.switch_pid):
                os.kill(state.switch_pid, signal.SIGTERM)
        # Everything but the serial consoles, kept for diagnosis until the next `up` of a role.
        if self.root.is_dir():
            for path in self.root.rglob("*"):
                if path.is_file() and path.name != "console.log":
                    path.unlink()
            for path in sorted(self.root.rglob("*"), reverse=True):
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
