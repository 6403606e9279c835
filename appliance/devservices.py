"""Local Kafka and MongoDB-protocol server for development and tests.

``appliance services up | down | status`` starts, stops and inspects a single-node Kafka (KRaft,
broker and controller in one JVM, built from the official jars on Maven Central) and a
MongoDB-protocol server (``mongod`` when one is on PATH, otherwise FerretDB with its SQLite backend,
built once from the Go module proxy). Both listen on 127.0.0.1 only and keep their data in a state
directory that ``down`` removes; the jars and the FerretDB binary are cached across runs.

Tests use the Python API: ``up(config) -> Endpoints``, ``status(config)`` and ``down(config)``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from appliance.config import ConfigError, Settings
from appliance.ops.counts import inference_health, measure

# Versions: the one place to change them. The Kafka version matches the `kafka` image (DESIGN.md).
KAFKA_VERSION = "3.8.0"
SCALA_VERSION = "2.13"
# The Kafka distribution ships slf4j-reload4j 1.7.36 as its logging binding; without a binding
# the broker logs nothing at all.
SLF4J_BINDING = ("org.slf4j", "slf4j-reload4j", "1.7.36")
# Pinned so the fetch does not depend on which Maven version is installed.
MAVEN_DEPENDENCY_PLUGIN_VERSION = "2.8"
FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.0"
# FerretDB 1.24's SQLite backend indexes _id as `_ferretdb_sjson->"_id"` but looks documents up
# by `_ferretdb_sjson->'$._id'`: the same value, but SQLite matches index expressions by their
# text, so every find, update and delete by _id scanned the whole table (the DB consumer's
# upserts slowed as the collection grew). The build makes the lookup use the index's expression.
FERRETDB_ID_LOOKUP = ("IDColumn = DefaultColumn + \"->'$._id'\"",
                      'IDColumn = DefaultColumn + `->"_id"`')  # fmt: skip
FERRETDB_PATCH_LEVEL = "p1"  # in the cached binary's name: a new patch rebuilds it

HOST = "127.0.0.1"
KAFKA_MESSAGE_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_KAFKA_PORT = 9092
DEFAULT_KAFKA_CONTROLLER_PORT = 9093
DEFAULT_MONGODB_PORT = 27017
DEFAULT_STATE_DIR = Path("/tmp/appliance-services")
DEFAULT_UP_TIMEOUT_S = 180.0
DEFAULT_STOP_TIMEOUT_S = 30.0
HEALTH_TOPIC = "appliance-healthcheck"
PROGRESS_INTERVAL_S = 15.0
LOG_TAIL_LINES = 25

ENV_KAFKA_PORT = "APPLIANCE_KAFKA_PORT"
ENV_KAFKA_CONTROLLER_PORT = "APPLIANCE_KAFKA_CONTROLLER_PORT"
ENV_MONGODB_PORT = "APPLIANCE_MONGODB_PORT"
ENV_STATE_DIR = "APPLIANCE_SERVICES_DIR"

STATE_FILE = "services.json"
STATE_FORMAT = 1
FETCHED_MARKER = ".fetch-complete"

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service could not be fetched, started, checked or stopped; the message says why."""


class MissingToolError(ServiceError):
    """A program the services need is not on PATH; the message names the package to install."""


# --- configuration -------------------------------------------------------------------------------


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "appliance"


def _port_from_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a port number, got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be between 1 and 65535, got {port}")
    return port


@dataclass(frozen=True)
class ServicesConfig:
    kafka_port: int = DEFAULT_KAFKA_PORT
    kafka_controller_port: int = DEFAULT_KAFKA_CONTROLLER_PORT
    mongodb_port: int = DEFAULT_MONGODB_PORT
    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        ports = [self.kafka_port, self.kafka_controller_port, self.mongodb_port]
        if len(set(ports)) != len(ports):
            raise ConfigError(
                f"the Kafka, Kafka controller and MongoDB ports must differ, got {ports} "
                f"({ENV_KAFKA_PORT}, {ENV_KAFKA_CONTROLLER_PORT}, {ENV_MONGODB_PORT})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServicesConfig:
        env = os.environ if environ is None else environ
        return cls(
            kafka_port=_port_from_env(env, ENV_KAFKA_PORT, DEFAULT_KAFKA_PORT),
            kafka_controller_port=_port_from_env(
                env, ENV_KAFKA_CONTROLLER_PORT, DEFAULT_KAFKA_CONTROLLER_PORT
            ),
            mongodb_port=_port_from_env(env, ENV_MONGODB_PORT, DEFAULT_MONGODB_PORT),
            state_dir=Path(env.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR),
            cache_dir=default_cache_dir(env),
        )

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def mongodb_dir(self) -> Path:
        return self.state_dir / "mongodb"

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(
            kafka_bootstrap_servers=f"{HOST}:{self.kafka_port}",
            mongodb_uri=f"mongodb://{HOST}:{self.mongodb_port}",
        )


@dataclass(frozen=True)
class Endpoints:
    """Where the running services answer, as the pipeline's settings name them."""

    kafka_bootstrap_servers: str
    mongodb_uri: str

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "MONGODB_URI": self.mongodb_uri,
        }

    def env_lines(self, export: bool = False) -> list[str]:
        prefix = "export " if export else ""
        return [f"{prefix}{name}={shlex.quote(value)}" for name, value in self.env().items()]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    address: str
    running: bool
    healthy: bool
    detail: str  # what runs there when healthy, the reason when not

    def line(self) -> str:
        pid = f"pid {self.pid}" if self.pid else "pid -"
        if self.healthy:
            state = f"healthy      {self.detail}"
        elif self.running:
            state = f"NOT HEALTHY  {self.detail}"
        else:
            state = "NOT RUNNING"
        return f"{self.name:<8} {pid:<10} {self.address:<16} {state}".rstrip()


# --- rendering (pure) ----------------------------------------------------------------------------


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as kafka-storage)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


def render_pom() -> str:
    group, artifact, version = SLF4J_BINDING
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by `appliance services`: the Kafka {KAFKA_VERSION} broker's runtime classpath. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.appliance</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{MAVEN_DEPENDENCY_PLUGIN_VERSION}</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


def render_server_properties(config: ServicesConfig) -> str:
    port, controller = config.kafka_port, config.kafka_controller_port
    settings = {
        # One JVM is both broker and the only controller (KRaft combined mode).
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(config.kafka_dir / "data"),
        "num.partitions": "3",
        # A single broker cannot hold more than one replica of anything.
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        # Fewer offsets partitions than the default 50: the first group join creates them all, which
        # takes seconds on a small dev machine.
        "offsets.topic.num.partitions": "5",
        # Consumers in tests join at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        # The kafka image's limit (images/kafka/entrypoint.sh): an image up to MAX_IMAGE_BYTES,
        # base64-encoded in its message, fits here as it does in the containers and the VMs.
        "message.max.bytes": str(KAFKA_MESSAGE_MAX_BYTES),
        "replica.fetch.max.bytes": str(KAFKA_MESSAGE_MAX_BYTES),
        "num.network.threads": "2",
        "num.io.threads": "4",
    }
    lines = [f"# Generated by `appliance services` for Kafka {KAFKA_VERSION}."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def render_log4j_properties(log_file: Path) -> str:
    return f"""# Generated by `appliance services`: everything goes to one rolling file.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
# The controller's per-request chatter drowns the lines that explain a failed start.
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.kafka.controller=WARN
log4j.logger.state.change.logger=WARN
"""


def kafka_java_command(java: str, libs: Path, config: ServicesConfig, main: str) -> list[str]:
    return [
        java,
        "-Xms256m",
        "-Xmx512m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration={(config.kafka_dir / 'log4j.properties').as_uri()}",
        "-cp",
        f"{libs}/*",
        main,
    ]


def kafka_server_command(java: str, libs: Path, config: ServicesConfig) -> list[str]:
    properties = str(config.kafka_dir / "server.properties")
    return [*kafka_java_command(java, libs, config, "kafka.Kafka"), properties]


def kafka_format_command(
    java: str, libs: Path, config: ServicesConfig, cluster_id: str
) -> list[str]:
    main = "kafka.tools.StorageTool"
    properties = str(config.kafka_dir / "server.properties")
    return [
        *kafka_java_command(java, libs, config, main),
        "format",
        "-t",
        cluster_id,
        "-c",
        properties,
    ]


def ferretdb_command(binary: Path, config: ServicesConfig) -> list[str]:
    data = config.mongodb_dir / "data"
    return [
        str(binary),
        "--handler=sqlite",
        # FerretDB wants a directory URI ending in a slash: one SQLite file per database.
        f"--sqlite-url=file:{data}/",
        f"--listen-addr={HOST}:{config.mongodb_port}",
        f"--state-dir={config.mongodb_dir}",
        "--telemetry=disable",
        # Its metrics/pprof listener defaults to 127.0.0.1:8088, which two stacks would fight over.
        "--debug-addr=-",
        "--log-level=INFO",
    ]


def mongod_command(mongod: str, config: ServicesConfig) -> list[str]:
    return [
        mongod,
        "--bind_ip",
        HOST,
        "--port",
        str(config.mongodb_port),
        "--dbpath",
        str(config.mongodb_dir / "data"),
    ]


# --- tools ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    command: str
    debian_package: str
    purpose: str


JAVA = Tool("java", "default-jre-headless", "to run Kafka")
MAVEN = Tool("mvn", "maven", "to fetch the Kafka jars from Maven Central (once)")
GO = Tool("go", "golang", f"to build FerretDB {FERRETDB_VERSION} (once), as no mongod is on PATH")


def find_tool(tool: Tool, path: str | None = None) -> str:
    found = shutil.which(tool.command, path=path)
    if found is None:
        raise MissingToolError(
            f"`{tool.command}` not found on PATH; it is needed {tool.purpose}: "
            f"install it with `apt-get install {tool.debian_package}`"
        )
    return found


@dataclass(frozen=True)
class Toolchain:
    java: str
    mvn: str | None  # None: the Kafka jars are cached
    mongod: str | None  # preferred over FerretDB when present
    go: str | None  # None: mongod is used or FerretDB is cached


def find_toolchain(config: ServicesConfig, path: str | None = None) -> Toolchain:
    """Every program `up` will need, checked before anything starts: one clear message, early."""
    java = find_tool(JAVA, path)
    mvn = None if kafka_libs_cached(config.cache_dir) else find_tool(MAVEN, path)
    mongod = shutil.which("mongod", path=path)
    needs_go = mongod is None and not ferretdb_binary(config.cache_dir).exists()
    go = find_tool(GO, path) if needs_go else None
    return Toolchain(java=java, mvn=mvn, mongod=mongod, go=go)


# --- fetching and building (cached) --------------------------------------------------------------


def kafka_home(cache_dir: Path) -> Path:
    return cache_dir / f"kafka-{KAFKA_VERSION}"


def kafka_libs_cached(cache_dir: Path) -> bool:
    return (kafka_home(cache_dir) / FETCHED_MARKER).exists()


def ferretdb_binary(cache_dir: Path) -> Path:
    return cache_dir / "bin" / f"ferretdb-{FERRETDB_VERSION}-{FERRETDB_PATCH_LEVEL}"


@contextlib.contextmanager
def _cache_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """Serialise fetches and builds: a test run and `make services` may start at the same time."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"    ({path} is missing)"
    tail = text.splitlines()[-lines:]
    if not tail:
        return f"    ({path} is empty)"
    return "\n".join(f"    {line}" for line in tail)


def run_step(
    what: str,
    command: list[str],
    *,
    cwd: Path,
    log_path: Path,
    out: TextIO,
    env: Mapping[str, str] | None = None,
    note: str = "",
) -> float:
    """Run one long step with its output in a log, printing elapsed time so it never looks hung."""
    print(f"{what} ({note + '; ' if note else ''}log: {log_path}) ...", file=out, flush=True)
    start = time.monotonic()
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            returncode = _wait_with_progress(proc, what, start, out)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    elapsed = time.monotonic() - start
    if returncode != 0:
        raise ServiceError(
            f"{what} failed (exit {returncode}) after {elapsed:.0f}s; "
            f"last lines of {log_path}:\n{log_tail(log_path)}"
        )
    print(f"{what}: done in {elapsed:.1f}s", file=out, flush=True)
    return elapsed


def _wait_with_progress(proc: subprocess.Popen[bytes], what: str, start: float, out: TextIO) -> int:
    next_report = PROGRESS_INTERVAL_S
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - start
            if elapsed >= next_report:
                print(f"  ... {what}: {elapsed:.0f}s so far", file=out, flush=True)
                next_report += PROGRESS_INTERVAL_S


def ensure_kafka_libs(cache_dir: Path, mvn: str | None, out: TextIO) -> Path:
    """The broker's jars, fetched by Maven once; the marker is written only after a full fetch."""
    home = kafka_home(cache_dir)
    libs = home / "libs"
    if kafka_libs_cached(cache_dir):
        return libs
    if mvn is None:
        mvn = find_tool(MAVEN)
    with _cache_lock(cache_dir, f"kafka-{KAFKA_VERSION}"):
        if kafka_libs_cached(cache_dir):  # another process fetched them while we waited
            return libs
        home.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(libs, ignore_errors=True)  # a half-finished earlier fetch
        (home / "pom.xml").write_text(render_pom())
        command = [mvn, "-B", "-q", "dependency:copy-dependencies", "-DoutputDirectory=libs"]
        what = f"fetching Kafka {KAFKA_VERSION} jars from Maven Central"
        note = "first time only"
        run_step(what, command, cwd=home, log_path=home / "fetch.log", out=out, note=note)
        if not (libs / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").exists():
            raise ServiceError(f"Maven finished but {libs} has no Kafka jar; see {home}/fetch.log")
        (home / FETCHED_MARKER).write_text(f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}\n")
    return libs


def ensure_ferretdb(cache_dir: Path, go: str | None, out: TextIO) -> Path:
    """FerretDB built from the Go module proxy once, cached as bin/ferretdb-<version>.

    Not `go install …@version`: FerretDB's module zip lacks the generated build/version/version.txt,
    and such a binary panics at start-up ("Invalid build/version/version.txt file content"). So the
    module source is downloaded, copied, given that file (as FerretDB's own `task gen-version`
    would) and built with its own go.mod and go.sum, which is what `go install` would use too.
    """
    binary = ferretdb_binary(cache_dir)
    if binary.exists():
        return binary
    if go is None:
        go = find_tool(GO)
    with _cache_lock(cache_dir, f"ferretdb-{FERRETDB_VERSION}"):
        if binary.exists():
            return binary
        build_dir = cache_dir / "build"
        build_dir.mkdir(parents=True, exist_ok=True)
        log_path = build_dir / f"ferretdb-{FERRETDB_VERSION}.log"
        start = time.monotonic()
        source = _ferretdb_source(go, build_dir, log_path, out)
        partial = binary.with_name(binary.name + ".partial")
        binary.parent.mkdir(parents=True, exist_ok=True)
        command = [
            go,
            "build",
            "-trimpath",
            "-buildvcs=false",
            "-o",
            str(partial),
            "./cmd/ferretdb",
        ]
        what = f"building FerretDB {FERRETDB_VERSION}"
        note = "first time only, a few minutes"
        run_step(what, command, cwd=source, log_path=log_path, out=out, env=_go_env(), note=note)
        _check_ferretdb_version(partial)
        partial.replace(binary)
        shutil.rmtree(source, ignore_errors=True)
        print(f"FerretDB ready in {time.monotonic() - start:.0f}s: {binary}", file=out, flush=True)
    return binary


def _go_env() -> dict[str, str]:
    # GOFLAGS from the user's shell (say -mod=vendor) would break a build of someone else's module.
    return {**os.environ, "GOFLAGS": "-mod=mod"}


def _ferretdb_source(go: str, build_dir: Path, log_path: Path, out: TextIO) -> Path:
    """A writable copy of the FerretDB module source with its version file in place."""
    what = f"downloading {FERRETDB_MODULE}@{FERRETDB_VERSION} from the Go module proxy"
    print(f"{what} ...", file=out, flush=True)
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
        cwd=build_dir,
        env=_go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    with open(log_path, "a") as log_file:
        log_file.write(result.stdout + result.stderr)
    try:
        module_dir = Path(json.loads(result.stdout)["Dir"])
    except (ValueError, KeyError):
        raise ServiceError(
            f"{what} failed (exit {result.returncode}):\n{result.stderr.strip() or result.stdout}"
        ) from None
    source = build_dir / f"ferretdb-{FERRETDB_VERSION}-src"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(module_dir, source)
    _make_writable(source)  # the module cache is read-only, and so is a copy of it
    (source / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
    _patch_id_lookup(source / "internal" / "backends" / "sqlite" / "metadata" / "metadata.go")
    return source


def _patch_id_lookup(path: Path) -> None:
    """See FERRETDB_ID_LOOKUP; refuses a source that does not read as expected."""
    old, new = FERRETDB_ID_LOOKUP
    text = path.read_text()
    if text.count(old) != 1:
        raise ServiceError(f"cannot patch FerretDB's _id lookup: {path} has no line `{old}`")
    path.write_text(text.replace(old, new))


def _make_writable(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def _check_ferretdb_version(binary: Path) -> None:
    result = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0 or f"version: {FERRETDB_VERSION}" not in result.stdout:
        raise ServiceError(
            f"the FerretDB binary built at {binary} does not run:\n{result.stdout}{result.stderr}"
        )


# --- processes -----------------------------------------------------------------------------------

# Children started by this Python process: kept so they can be reaped (a zombie still "exists" to
# kill(pid, 0)) and so Popen does not warn that they are still running when it is collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn_detached(command: list[str], log_path: Path, cwd: Path) -> int:
    """Start a service in its own session so it outlives the CLI and ignores the shell's Ctrl-C."""
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def process_alive(pid: int, match: str) -> bool:
    """Whether `pid` is still running *and* is the service: pids get reused after a reboot."""
    child = _CHILDREN.get(pid)
    if child is not None:
        # Our own child: its pid cannot be reused before we reap it, and just after exec its
        # /proc command line may still read as empty.
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A zombie (state Z, after the closing paren of the command name) holds no ports: gone.
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):
        return False
    return match.encode() in cmdline


def stop_process(pid: int, match: str, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
    """SIGTERM (Kafka then shuts down cleanly), SIGKILL if it is still there after `timeout_s`."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        if not process_alive(pid, match):
            break
        _signal_group(pid, sig)
        deadline = time.monotonic() + wait_s
        while process_alive(pid, match) and time.monotonic() < deadline:
            time.sleep(0.2)
    if process_alive(pid, match):
        raise ServiceError(f"process {pid} ({match}) did not stop even after SIGKILL")
    _CHILDREN.pop(pid, None)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The service leads its own session; signal its whole group so no helper is left behind.
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Connections of a service that just stopped linger in TIME_WAIT; they do not block a
        # new listener (the services set SO_REUSEADDR too), so they must not fail this check.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(config: ServicesConfig) -> None:
    wanted = [
        ("Kafka", config.kafka_port, ENV_KAFKA_PORT),
        ("Kafka controller", config.kafka_controller_port, ENV_KAFKA_CONTROLLER_PORT),
        ("MongoDB", config.mongodb_port, ENV_MONGODB_PORT),
    ]
    for label, port, env_name in wanted:
        if not port_free(port):
            raise ServiceError(
                f"port {port} on {HOST} (for {label}) is already in use by another program: "
                f"stop it, or pick another port with {env_name}=<port>"
            )


# --- health --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_client_logs() -> Iterator[None]:
    """The clients log every refused connection while a service boots; those are expected."""
    loggers = [logging.getLogger(name) for name in ("kafka", "pymongo")]
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def mongodb_problem(uri: str, timeout_s: float = 2.0) -> str | None:
    """None when the server answers `ping`, else what went wrong."""
    timeout_ms = int(timeout_s * 1000)
    client: MongoClient[dict[str, Any]] = MongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=timeout_ms * 2,
        directConnection=True,
    )
    try:
        client.admin.command("ping")
        return None
    except PyMongoError as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        client.close()


def kafka_problem(bootstrap: str, timeout_s: float = 5.0, create_topic: bool = False) -> str | None:
    """None when the broker answers a metadata request (and can create and list a topic)."""
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="appliance-services-health",
            request_timeout_ms=timeout_ms,
            api_version_auto_timeout_ms=timeout_ms,
        )
    except KafkaError as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        if not admin.describe_cluster().get("brokers"):
            return "metadata lists no broker yet"
        if create_topic:
            with contextlib.suppress(TopicAlreadyExistsError):
                topic = NewTopic(name=HEALTH_TOPIC, num_partitions=1, replication_factor=1)
                admin.create_topics([topic], timeout_ms=timeout_ms)
            if HEALTH_TOPIC not in admin.list_topics():
                return f"topic {HEALTH_TOPIC} was created but is not listed yet"
        return None
    except KafkaError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        admin.close()


@dataclass(frozen=True)
class Started:
    """A service process `up` just launched."""

    name: str
    pid: int
    match: str  # a piece of its command line, to tell it from a stranger with a reused pid
    logs: tuple[Path, ...]  # where to look when it fails, most telling first

    def logs_tail(self) -> str:
        shown = [path for path in self.logs if path.exists() and path.stat().st_size > 0]
        return "\n".join(
            f"  last lines of {path}:\n{log_tail(path)}" for path in shown or self.logs
        )


def wait_healthy(service: Started, problem: Callable[[], str | None], deadline: float) -> None:
    """Poll until `problem()` is None; fail fast if the process dies, with its log either way."""
    while True:
        if not process_alive(service.pid, service.match):
            raise ServiceError(
                f"{service.name} (pid {service.pid}) exited during start-up;\n{service.logs_tail()}"
            )
        with _quiet_client_logs():
            reason = problem()
        if reason is None:
            return
        if time.monotonic() >= deadline:
            raise ServiceError(
                f"{service.name} (pid {service.pid}) not healthy in time ({reason});\n"
                f"{service.logs_tail()}"
            )
        time.sleep(0.5)


# --- state ---------------------------------------------------------------------------------------


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


def _refuse_foreign_dir(config: ServicesConfig) -> None:
    """Never start in, or delete, a directory this tool did not create."""
    directory = config.state_dir
    if directory.exists() and not config.state_file.exists() and any(directory.iterdir()):
        raise ServiceError(
            f"{directory} exists, is not empty and holds no {STATE_FILE}: not using or removing "
            f"it; choose another directory with {ENV_STATE_DIR}=<dir>"
        )


def _service_status(name: str, entry: Mapping[str, Any]) -> ServiceStatus:
    pid, match, address = int(entry["pid"]), str(entry["match"]), str(entry["address"])
    if not process_alive(pid, match):
        return ServiceStatus(name, pid, address, running=False, healthy=False, detail="")
    with _quiet_client_logs():
        if name == "kafka":
            reason = kafka_problem(address, timeout_s=3.0)
        else:
            reason = mongodb_problem(f"mongodb://{address}", timeout_s=2.0)
    detail = str(entry.get("detail", "")) if reason is None else reason
    return ServiceStatus(name, pid, address, running=True, healthy=reason is None, detail=detail)


def _stop_recorded(state: Mapping[str, Any], timeout_s: float, out: TextIO) -> None:
    for name, entry in state.get("services", {}).items():
        pid, match = int(entry["pid"]), str(entry["match"])
        if process_alive(pid, match):
            print(f"stopping {name} (pid {pid}) ...", file=out, flush=True)
            stop_process(pid, match, timeout_s)


# --- the API the CLI and the tests use ----------------------------------------------------------


def status(config: ServicesConfig | None = None) -> list[ServiceStatus]:
    """One entry per recorded service; empty when the services were never started here."""
    config = config or ServicesConfig.from_env()
    state = read_state(config)
    if state is None:
        return []
    return [_service_status(name, entry) for name, entry in state.get("services", {}).items()]


def is_running(config: ServicesConfig | None = None) -> bool:
    """Whether a stack started here answers, healthy: callers that find one leave it running."""
    statuses = status(config)
    return bool(statuses) and all(entry.healthy for entry in statuses)


def down(
    config: ServicesConfig | None = None,
    *,
    timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    out: TextIO | None = None,
) -> bool:
    """Stop the services and delete their data. False when there was nothing to stop."""
    config = config or ServicesConfig.from_env()
    out = out or sys.stderr
    _refuse_foreign_dir(config)
    state = read_state(config)
    if state is None:
        with contextlib.suppress(OSError):
            config.state_dir.rmdir()  # only when empty
        print(f"services are not running (nothing in {config.state_dir})", file=out, flush=True)
        return False
    _stop_recorded(state, timeout_s, out)
    shutil.rmtree(config.state_dir)
    print(f"services stopped; removed {config.state_dir}", file=out, flush=True)
    return True


def up(
    config: ServicesConfig | None = None,
    *,
    timeout_s: float = DEFAULT_UP_TIMEOUT_S,
    out: TextIO | None = None,
) -> Endpoints:
    """Start Kafka and the MongoDB-protocol server, healthy, or say they already are."""
    config = config or ServicesConfig.from_env()
    out = out or sys.stderr
    _refuse_foreign_dir(config)
    if _already_up(config, timeout_s, out):
        return config.endpoints
    tools = find_toolchain(config)
    check_ports_free(config)
    libs = ensure_kafka_libs(config.cache_dir, tools.mvn, out)
    mongo_command, mongo_detail = _mongodb_command(config, tools, out)
    start = time.monotonic()
    _prepare_state_dir(config)
    _format_kafka_storage(config, tools.java, libs)
    state: dict[str, Any] = {"format": STATE_FORMAT, "services": {}}
    try:
        kafka = _start_kafka(config, tools.java, libs, state, out)
        mongodb = _start_mongodb(config, mongo_command, mongo_detail, state, out)
        deadline = time.monotonic() + timeout_s
        endpoints = config.endpoints
        wait_healthy(mongodb, lambda: mongodb_problem(endpoints.mongodb_uri), deadline)
        bootstrap = endpoints.kafka_bootstrap_servers
        wait_healthy(kafka, lambda: kafka_problem(bootstrap, create_topic=True), deadline)
    except BaseException:
        # Free the ports but keep the logs for reading; the next `up` or `down` clears them.
        _stop_recorded(state, DEFAULT_STOP_TIMEOUT_S, out)
        raise
    print(
        f"services up in {time.monotonic() - start:.1f}s (data in {config.state_dir}; "
        "stop with `appliance services down`)",
        file=out,
        flush=True,
    )
    return config.endpoints


def _already_up(config: ServicesConfig, timeout_s: float, out: TextIO) -> bool:
    """True when a healthy stack answers here, once any service that died is started again on
    its data; a start that never finished is cleared for a new one."""
    state = read_state(config)
    if state is None:
        return False
    statuses = [_service_status(name, entry) for name, entry in state["services"].items()]
    if statuses and all(s.healthy for s in statuses):
        if state.get("endpoints") != config.endpoints.env():
            raise ServiceError(
                f"services are already running from {config.state_dir} with "
                f"{state.get('endpoints')}, not the ports asked for; "
                "run `appliance services down` first"
            )
        print(f"services already running and healthy (data in {config.state_dir})", file=out)
        return True
    if _resumable(config, state):
        # A crashed broker or database keeps what it had accepted: start it again, never wipe.
        _restart_stopped(config, state, statuses, timeout_s, out)
        return True
    unhealthy = ", ".join(s.name for s in statuses if not s.healthy) or "none recorded"
    print(f"clearing a stale start in {config.state_dir} (not healthy: {unhealthy})", file=out)
    _stop_recorded(state, DEFAULT_STOP_TIMEOUT_S, out)
    shutil.rmtree(config.state_dir)
    return False


def _resumable(config: ServicesConfig, state: Mapping[str, Any]) -> bool:
    """Whether this stack once came up whole (both services, Kafka's storage formatted) with the
    ports asked for now: then a stopped service is started again on its data."""
    return (
        set(state.get("services", {})) == {"kafka", "mongodb"}
        and state.get("endpoints") == config.endpoints.env()
        and (config.kafka_dir / "data" / "meta.properties").exists()
    )


def _restart_stopped(
    config: ServicesConfig,
    state: dict[str, Any],
    statuses: list[ServiceStatus],
    timeout_s: float,
    out: TextIO,
) -> None:
    tools = find_toolchain(config)
    waiting: list[tuple[Started, Callable[[], str | None]]] = []
    endpoints = config.endpoints
    for entry in statuses:
        recorded = state["services"][entry.name]
        if entry.running:  # alive, not yet healthy: wait for it
            started = Started(entry.name, entry.pid, str(recorded["match"]), ())
        else:
            print(
                f"{entry.name} (pid {entry.pid}) is not running: starting it again on its data "
                f"in {config.state_dir}",
                file=out,
                flush=True,
            )
            if entry.name == "kafka":
                libs = ensure_kafka_libs(config.cache_dir, tools.mvn, out)
                started = _start_kafka(config, tools.java, libs, state, out)
            else:
                command, detail = _mongodb_command(config, tools, out)
                started = _start_mongodb(config, command, detail, state, out)
        if entry.name == "kafka":
            waiting.append((started, lambda: kafka_problem(endpoints.kafka_bootstrap_servers)))
        else:
            waiting.append((started, lambda: mongodb_problem(endpoints.mongodb_uri)))
    deadline = time.monotonic() + timeout_s
    try:
        for started, problem in waiting:
            wait_healthy(started, problem, deadline)
    except ServiceError as exc:
        raise ServiceError(
            f"{exc}\nthe data is kept in {config.state_dir}; `appliance services down` deletes "
            "it, and a new `up` starts empty"
        ) from None
    print(f"services up again (data in {config.state_dir})", file=out, flush=True)


def _mongodb_command(
    config: ServicesConfig, tools: Toolchain, out: TextIO
) -> tuple[list[str], str]:
    if tools.mongod is not None:
        return mongod_command(tools.mongod, config), f"mongod ({tools.mongod})"
    binary = ensure_ferretdb(config.cache_dir, tools.go, out)
    return ferretdb_command(binary, config), f"FerretDB {FERRETDB_VERSION} (SQLite)"


def _prepare_state_dir(config: ServicesConfig) -> None:
    for directory in (config.kafka_dir / "data", config.mongodb_dir / "data"):
        directory.mkdir(parents=True, exist_ok=True)
    # Written first: from here on `down` recognises the directory as ours and may remove it.
    write_state(config, {"format": STATE_FORMAT, "services": {}})
    kafka_log = config.kafka_dir / "kafka.log"
    (config.kafka_dir / "server.properties").write_text(render_server_properties(config))
    (config.kafka_dir / "log4j.properties").write_text(render_log4j_properties(kafka_log))


def _format_kafka_storage(config: ServicesConfig, java: str, libs: Path) -> None:
    """KRaft refuses to start on an unformatted log directory."""
    command = kafka_format_command(java, libs, config, new_cluster_id())
    result = subprocess.run(
        command,
        cwd=config.kafka_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise ServiceError(f"formatting Kafka storage failed (exit {result.returncode}):\n{output}")


def _record(
    config: ServicesConfig, state: dict[str, Any], name: str, entry: dict[str, Any]
) -> None:
    state["services"][name] = entry
    state["endpoints"] = config.endpoints.env()
    write_state(config, state)


def _start_kafka(
    config: ServicesConfig, java: str, libs: Path, state: dict[str, Any], out: TextIO
) -> Started:
    address = config.endpoints.kafka_bootstrap_servers
    print(f"starting Kafka {KAFKA_VERSION} (KRaft) on {address} ...", file=out, flush=True)
    command = kafka_server_command(java, libs, config)
    pid = spawn_detached(command, config.kafka_dir / "stdout.log", config.kafka_dir)
    match = "kafka.Kafka"
    detail = f"Kafka {KAFKA_VERSION} (KRaft, controller on {HOST}:{config.kafka_controller_port})"
    entry = {"pid": pid, "match": match, "address": address, "detail": detail}
    _record(config, state, "kafka", entry)
    # The broker logs through log4j; the JVM's own output only has failures before log4j is up.
    logs = (config.kafka_dir / "kafka.log", config.kafka_dir / "stdout.log")
    return Started("Kafka", pid, match, logs)


def _start_mongodb(
    config: ServicesConfig, command: list[str], detail: str, state: dict[str, Any], out: TextIO
) -> Started:
    address = f"{HOST}:{config.mongodb_port}"
    print(f"starting {detail} on {address} ...", file=out, flush=True)
    log_path = config.mongodb_dir / "server.log"
    pid = spawn_detached(command, log_path, config.mongodb_dir)
    match = command[0]
    entry = {"pid": pid, "match": match, "address": address, "detail": detail}
    _record(config, state, "mongodb", entry)
    return Started("MongoDB-protocol server", pid, match, (log_path,))


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["up", "down", "status"],
        help="up: start (or check) the services; down: stop them and delete their data; "
        "status: show each service's pid, address and health",
    )
    parser.add_argument(
        "--env",
        action="store_true",
        help="up: print only `export NAME=value` lines, for "
        '`eval "$(appliance services up --env)"`',
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_UP_TIMEOUT_S,
        metavar="SECONDS",
        help="up: how long to wait for the services to be healthy "
        f"(default {DEFAULT_UP_TIMEOUT_S:g})",
    )
    parser.epilog = (
        f"Ports and place: {ENV_KAFKA_PORT} (default {DEFAULT_KAFKA_PORT}), "
        f"{ENV_KAFKA_CONTROLLER_PORT} ({DEFAULT_KAFKA_CONTROLLER_PORT}), "
        f"{ENV_MONGODB_PORT} ({DEFAULT_MONGODB_PORT}), {ENV_STATE_DIR} ({DEFAULT_STATE_DIR})."
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "up":
            endpoints = up(timeout_s=args.timeout)
            print("\n".join(endpoints.env_lines(export=args.env)), flush=True)
            return 0
        if args.action == "down":
            down()
            return 0
        return _print_status()
    except ServiceError as exc:
        print(f"appliance services {args.action}: {exc}", file=sys.stderr)
        return 1


def _print_status() -> int:
    config = ServicesConfig.from_env()
    statuses = status(config)
    if not statuses:
        print(f"services are not running (nothing in {config.state_dir})")
        return 1
    for entry in statuses:
        print(entry.line())
    # What flows through them: the same view as `appliance stack status`. Topics, groups and the
    # server's URL as the local `appliance serve` and consumers read them; these services' own
    # addresses unless the environment names others.
    settings = Settings.from_env({**config.endpoints.env(), **os.environ})
    print("\n".join(measure(settings).lines()))
    print(inference_health(settings.inference_url))
    return 0 if all(entry.healthy for entry in statuses) else 1
