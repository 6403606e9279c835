"""The containers provider: the four images' playbooks converged into systemd containers.

The cheap variant of the four-VM test, for CI. Each "VM" is a Debian 12 systemd container started
from the role tests' prepared image (tests/infra: the base from systemd-image.sh with prepare.yml's
common and docker roles applied), into which its image's playbook (images/ROLE/playbook.yml) is
converged through the docker CLI, with the real container images that `make save` wrote. So each
one runs the appliance's own units and its own dockerd (Docker in Docker), as a baked VM does. All
four sit on one user-defined Docker network, ``NAME-net``, at the plan's fixed addresses.

A create is the bake: converge, then power off (the units and the settings watch only start at the
next boot, as on a VM). The first start is the instance's first boot: the plan's user-data is
applied the way cloud-init's write_files module does it (apply_write_files) and appliance-env.path
starts the units when /etc/appliance/appliance.env appears. A later start boots the same filesystem
and the same /var/lib/docker volume. State lives in build/cloud-containers/state.json, each
container's converge log and seed under build/cloud-containers/.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.cloud import credentials, topology, transport
from appliance.cloud import plan as plans
from appliance.cloud.docker_converge import INFRA, REPO, converge
from appliance.cloud.localvm import HOST_NUMBER, check_subnet
from appliance.cloud.systemd_containers import (
    DockerError,
    cgroup_of,
    docker,
    run_systemd,
    wait_systemd,
)
from appliance.cloud.writefiles import apply_write_files
from appliance.config import ConfigError

# This provider's private network by default (the VM provider's is 10.213.57.0/24).
SUBNET = "10.213.58.0/24"
BASE_IMAGE = "appliance-test/debian-systemd:bookworm"
PREPARED_REPOSITORY = "appliance-test/prepared"
# What `make save` writes (consumers.tar.gz is the kafka image under its other name).
TARBALLS = ("producer", "ml-server", "kafka", "consumers", "mongodb")
# Inner Docker storage. /var/lib/docker is an anonymous volume on the host's ext4, not on the
# container's own overlay, so the inner dockerd runs on overlay2 there (found with Docker 20.10 on
# ext4: all four images load and run; the ml-server converge, its 1.6 GB TensorFlow image of then
# included, took about 2 min on 2 cores; the image is 500 MB on OpenVINO since), where vars.yml's
# vfs would copy each image once per layer. vfs stays the fallback for a host where the inner
# dockerd cannot start on overlay2.
STORAGE_DRIVERS = ("overlay2", "vfs")

# Memory limits (MiB) of the systemd containers, their inner containers included (the inner
# dockerd's cgroup parent is the outer container's cgroup): 8 GiB for all four. TensorFlow and the
# model take about 1.5 GiB; the broker's JVM (heap up to 1 GiB) and two consumers next.
MEMORY_MIB = {"mongodb": 1024, "ml-server": 3072, "kafka": 3072, "producer": 1024}


@dataclass
class Container:
    role: str
    name: str  # the container's name and host name: NAME-ROLE
    address: str
    memory_mib: int
    converge_s: float = 0.0
    first_boot: float = 0.0
    boots: int = 0


@dataclass
class State:
    name: str
    subnet: str
    network: str
    image: str  # the prepared image every container starts from
    storage_driver: str  # the inner dockerd's
    containers_dir: str  # the `make save` tarballs the playbooks load
    containers: dict[str, Container] = field(default_factory=dict)


def check_tarballs(containers_dir: Path) -> Path:
    missing = [t for t in TARBALLS if not (containers_dir / f"{t}.tar.gz").is_file()]
    if missing:
        raise ConfigError(
            f"no container image tarball for {', '.join(missing)} in {containers_dir}: "
            "run `make containers save`"
        )
    return containers_dir.resolve()


# -- the provider ------------------------------------------------------------------------------


class ContainerCloud:
    """Create, boot and reach the systemd containers of one deployment; its state is a JSON file."""

    def __init__(self, root: Path = Path("build/cloud-containers")) -> None:
        self.root = root
        self.state_file = root / "state.json"
        self.logs = root / "logs"
        self.out = sys.stdout

    # -- state -------------------------------------------------------------------------------

    def load(self) -> State | None:
        if not self.state_file.is_file():
            return None
        data = json.loads(self.state_file.read_text())
        containers = {role: Container(**c) for role, c in data.pop("containers").items()}
        return State(**data, containers=containers)

    def save(self, state: State) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")

    def require(self) -> State:
        state = self.load()
        if state is None:
            raise ConfigError(
                f"no local cloud under {self.root}: run `appliance cloud --provider containers up`"
            )
        return state

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- plan --------------------------------------------------------------------------------

    def prepare(
        self, name: str, subnet: str, containers_dir: Path = Path("build/containers")
    ) -> State:
        """The deployment's state: loaded, or new (addresses, the prepared image, the network)."""
        tarballs = check_tarballs(containers_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        state = self.load() or self.new_state(name, subnet, tarballs)
        if docker("image", "inspect", state.image, check=False).returncode:
            state.image, state.storage_driver = self.ensure_prepared()
        state.containers_dir = str(tarballs)
        self.ensure_network(state)
        self.save(state)
        return state

    def new_state(self, name: str, subnet: str, containers_dir: Path) -> State:
        left = leftovers(name)
        if left:
            # Its state is gone (another checkout, or a run stopped half way): nothing here can
            # manage those, and their names and subnet block a new deployment of the same name.
            raise ConfigError(
                f"a deployment named {name} is already on this machine, with no state under "
                f"{self.root}: {', '.join(left)}. Remove it with `appliance cloud --provider "
                "containers down`, or choose another --name and --subnet"
            )
        net = check_subnet(subnet)
        image, driver = self.ensure_prepared()
        state = State(name, str(net), network_name(name), image, driver, str(containers_dir))
        for role in topology.DEPLOY_ORDER:
            state.containers[role] = Container(
                role=role,
                name=container_name(name, role),
                address=str(net.network_address + HOST_NUMBER[role]),
                memory_mib=MEMORY_MIB[role],
            )
        return state

    def plan(self, state: State, **options: object) -> plans.Plan:
        # No static NIC and no SSH keys: Docker gives each container its address, docker exec
        # reaches it.
        return plans.make_plan(
            state.name,
            {role: c.address for role, c in state.containers.items()},
            **credentials.as_options(credentials.of_local_cloud(self.root)),
            tls=transport.of_local_cloud(self.root),
            **options,  # type: ignore[arg-type]
        )

    # -- images and network ------------------------------------------------------------------

    def prepared_key(self) -> str:
        """What the prepared image is made of: the common and docker roles, prepare.yml, vars.yml
        and the base image (run.sh's cache key's inputs; the tag says the storage driver)."""
        digest = hashlib.sha256()
        files = sorted(
            p
            for role in ("common", "docker")
            for p in (REPO / "roles" / role).rglob("*")
            if p.is_file()
        )
        for path in [*files, INFRA / "prepare.yml", INFRA / "vars.yml"]:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
        base_id = docker("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout.strip()
        digest.update(base_id.encode())
        return digest.hexdigest()[:12]

    def ensure_prepared(self) -> tuple[str, str]:
        """The prepared image (made once and kept, like run.sh's) and its inner storage driver."""
        subprocess.run([str(INFRA / "systemd-image.sh"), BASE_IMAGE], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        key = self.prepared_key()
        tags = {d: f"{PREPARED_REPOSITORY}:containers-{d}-{key}" for d in STORAGE_DRIVERS}
        for driver, tag in tags.items():
            if docker("image", "inspect", tag, check=False).returncode == 0:
                return tag, driver
        for driver, tag in tags.items():
            if self.build_prepared(tag, driver):
                return tag, driver
        raise DockerError(f"could not prepare {PREPARED_REPOSITORY}: see {self.logs}/prepare-*.log")

    def build_prepared(self, tag: str, driver: str) -> bool:
        """prepare.yml (common + docker roles) on the bare base, committed; False when the inner
        dockerd does not run on ``driver``."""
        name = "appliance-containers-prepare"
        logfile = self.logs / f"prepare-{driver}.log"
        self.say(f"prepared image: common + docker roles, inner storage {driver} (log {logfile})")
        start = time.monotonic()
        try:
            run_systemd(name, BASE_IMAGE, [])
            ok = converge(name, INFRA / "prepare.yml", logfile, driver, {})
            actual = docker("exec", name, "docker", "info", "--format", "{{.Driver}}",
                            check=False).stdout.strip()  # fmt: skip
            if actual != driver:
                self.say(f"prepared image: dockerd does not run on {driver} inside ({actual!r})")
                return False
            if not ok:
                tail = "\n".join(logfile.read_text().splitlines()[-15:])
                raise DockerError(f"prepare.yml failed (log {logfile}):\n{tail}")
            docker("commit", name, tag)
        finally:
            docker("rm", "-f", "-v", name, check=False)
        self.say(f"prepared image {tag} in {time.monotonic() - start:.0f} s")
        return True

    def ensure_network(self, state: State) -> None:
        if docker("network", "inspect", state.network, check=False).returncode == 0:
            return
        docker("network", "create", "--driver", "bridge", "--subnet", state.subnet,
               state.network)  # fmt: skip

    # -- containers --------------------------------------------------------------------------

    def exists(self, state: State, role: str) -> bool:
        name = state.containers[role].name
        return docker("container", "inspect", name, check=False).returncode == 0

    def running(self, state: State, role: str) -> bool:
        name = state.containers[role].name
        result = docker("container", "inspect", "--format", "{{.State.Running}}", name,
                        check=False)  # fmt: skip
        return result.stdout.strip() == "true"

    def seed(self, role: str) -> Path:
        return self.root / role / "user-data"

    def create(self, state: State, boot: plans.Boot) -> None:
        """The bake: a systemd container converged with the image's playbook, powered off, and
        the plan's user-data kept for its first boot."""
        ctr = state.containers[boot.role]
        self.ensure_network(state)
        start = time.monotonic()
        options = ["--network", state.network, "--ip", ctr.address, "--memory",
                   f"{ctr.memory_mib}m", "--memory-swap", f"{ctr.memory_mib}m"]  # fmt: skip
        run_systemd(ctr.name, state.image, options)
        logfile = self.logs / f"{boot.role}-converge.log"
        self.say(f"{boot.role}: converging images/{boot.role}/playbook.yml into {ctr.name} "
                 f"(log {logfile})")  # fmt: skip
        extra = {
            "appliance_containers_dir": state.containers_dir,
            "docker_daemon_options": {"cgroup-parent": cgroup_of(ctr.name)},
        }
        if not converge(ctr.name, REPO / "images" / boot.role / "playbook.yml", logfile,
                             state.storage_driver, extra):  # fmt: skip
            tail = "\n".join(logfile.read_text().splitlines()[-15:])
            raise DockerError(f"{boot.role}: the playbook failed (log {logfile}):\n{tail}")
        ctr.converge_s = time.monotonic() - start
        self.say(f"{boot.role}: converged in {ctr.converge_s:.0f} s")
        docker("stop", "-t", "60", ctr.name, timeout=120)
        seed = self.seed(boot.role)
        seed.parent.mkdir(parents=True, exist_ok=True)
        seed.write_text(boot.user_data)
        seed.chmod(0o600)
        ctr.first_boot = 0.0
        ctr.boots = 0
        self.save(state)

    def start(self, state: State, role: str) -> None:
        """Boot the container from its filesystem; on its first boot, write the user-data's files
        as cloud-init would (its settings: the units start when they appear)."""
        ctr = state.containers[role]
        if not self.running(state, role):
            docker("start", ctr.name)
        wait_systemd(ctr.name)
        ctr.boots += 1
        if not ctr.first_boot:
            written = apply_write_files(self.seed(role).read_text(),
                                        lambda command: self.checked(role, command))  # fmt: skip
            ctr.first_boot = time.time()
            self.say(f"{role}: first boot, wrote {', '.join(written)} (cloud-init's write_files)")
        self.save(state)

    def checked(self, role: str, command: str) -> subprocess.CompletedProcess[str]:
        result = self.run(role, command, timeout=60, check=False)
        if result.returncode:
            raise DockerError(f"{role}: {command[:80]}...: {result.stderr.strip()[-400:]}")
        return result

    def crash(self, state: State, role: str) -> None:
        """Pull the plug: SIGKILL to the container's init, no shutdown."""
        if self.running(state, role):
            docker("kill", state.containers[role].name)

    def shutdown(self, state: State, role: str, timeout: float = 300) -> None:
        """A clean power-off (systemd halts); killed if it takes longer than ``timeout``."""
        if self.running(state, role):
            docker("stop", "-t", str(int(timeout)), state.containers[role].name,
                   timeout=timeout + 60)  # fmt: skip

    def run(
        self, role: str, command: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``command`` as root in the container."""
        return subprocess.run(
            ["docker", "exec", self.require().containers[role].name, "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def testinfra_host(self, role: str) -> tuple[str, dict[str, object]]:
        """What testinfra.get_host takes for this container."""
        return f"docker://{self.require().containers[role].name}", {}

    def mongodb_uri(self, state: State) -> str:
        """MongoDB in the mongodb container, from this machine: its address on the network."""
        creds = credentials.of_local_cloud(self.root)
        address = state.containers["mongodb"].address
        return topology.mongodb_uri(
            address,
            creds.mongodb_user,
            creds.mongodb_password,
            direct=True,
            tls_ca_file=str(transport.local_ca_file(self.root)),
        )

    def describe(self, state: State) -> list[str]:
        lines = [
            f"local cloud {state.name}: systemd containers on Docker network {state.network} "
            f"({state.subnet}), from {state.image}, inner storage {state.storage_driver}"
        ]
        for role, ctr in state.containers.items():
            up = "running" if self.running(state, role) else "off"
            lines.append(
                f"  {role:9} {up:7} {ctr.address:13} {ctr.memory_mib} MiB  docker exec -it "
                f"{ctr.name} bash  converged in {ctr.converge_s:.0f} s, boots {ctr.boots}"
            )
        return lines

    def down(self, name: str) -> None:
        """Remove the deployment: the state's, or without one, what the name ``name`` left."""
        state = self.load()
        if state is not None:
            containers = [ctr.name for ctr in state.containers.values()]
            network = state.network
        else:
            containers = [container_name(name, role) for role in topology.DEPLOY_ORDER]
            network = network_name(name)
        for container in containers:  # absent ones: docker says so, and nothing else happens
            docker("rm", "-f", "-v", container, check=False, timeout=120)
        docker("network", "rm", network, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def container_name(name: str, role: str) -> str:
    return f"{name}-{role}"


def network_name(name: str) -> str:
    return f"{name}-net"


def leftovers(name: str) -> list[str]:
    """The containers and network (last) of a deployment ``name`` that exist on this machine."""
    candidates = [container_name(name, role) for role in topology.DEPLOY_ORDER]
    found = [c for c in candidates if not docker("container", "inspect", c, check=False).returncode]
    if docker("network", "inspect", network_name(name), check=False).returncode == 0:
        found.append(network_name(name))
    return found
