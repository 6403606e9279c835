"""What the local services are: versions, ports, places, the settings from the environment, the
addresses they answer on, and the errors `appliance services` reports."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from appliance.config import ConfigError, Settings

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

HOST = "127.0.0.1"
KAFKA_MESSAGE_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_KAFKA_PORT = 9092
DEFAULT_KAFKA_CONTROLLER_PORT = 9093
# The broker's own PLAINTEXT listener, loopback only: between broker and itself, and where `up`
# adds the clients' SCRAM user (a SASL listener needs one before anybody can log in).
DEFAULT_KAFKA_INTERNAL_PORT = 9094
DEFAULT_MONGODB_PORT = 27017
DEFAULT_STATE_DIR = Path("/tmp/appliance-services")
DEFAULT_UP_TIMEOUT_S = 180.0
DEFAULT_STOP_TIMEOUT_S = 30.0
HEALTH_TOPIC = "appliance-healthcheck"
PROGRESS_INTERVAL_S = 15.0
LOG_TAIL_LINES = 25

ENV_KAFKA_PORT = "APPLIANCE_KAFKA_PORT"
ENV_KAFKA_CONTROLLER_PORT = "APPLIANCE_KAFKA_CONTROLLER_PORT"
ENV_KAFKA_INTERNAL_PORT = "APPLIANCE_KAFKA_INTERNAL_PORT"
ENV_MONGODB_PORT = "APPLIANCE_MONGODB_PORT"
ENV_STATE_DIR = "APPLIANCE_SERVICES_DIR"

STATE_FILE = "services.json"
STATE_FORMAT = 1
FETCHED_MARKER = ".fetch-complete"


class ServiceError(RuntimeError):
    """A service could not be fetched, started, checked or stopped; the message says why."""


class MissingToolError(ServiceError):
    """A program the services need is not on PATH; the message names the package to install."""


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


# FerretDB authenticates this one user (SCRAM-SHA-256); its password is the stack's own.
MONGODB_USER = "appliance"
MONGODB_AUTH_DB = "admin"
# Kafka's clients log in as this user (SCRAM-SHA-512) over TLS; its password is the stack's own.
KAFKA_USER = "appliance"


@dataclass(frozen=True)
class ServicesConfig:
    kafka_port: int = DEFAULT_KAFKA_PORT
    kafka_controller_port: int = DEFAULT_KAFKA_CONTROLLER_PORT
    mongodb_port: int = DEFAULT_MONGODB_PORT
    kafka_internal_port: int = DEFAULT_KAFKA_INTERNAL_PORT
    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:
        ports = [
            self.kafka_port, self.kafka_controller_port, self.mongodb_port, self.kafka_internal_port
        ]  # fmt: skip
        if len(set(ports)) != len(ports):
            raise ConfigError(
                f"the Kafka, Kafka controller, MongoDB and Kafka internal ports must differ, got "
                f"{ports} ({ENV_KAFKA_PORT}, {ENV_KAFKA_CONTROLLER_PORT}, {ENV_MONGODB_PORT}, "
                f"{ENV_KAFKA_INTERNAL_PORT})"
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
            kafka_internal_port=_port_from_env(
                env, ENV_KAFKA_INTERNAL_PORT, DEFAULT_KAFKA_INTERNAL_PORT
            ),
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
    def password_file(self) -> Path:
        """The MongoDB-protocol server's password, made at the first `up` (mode 0600)."""
        return self.mongodb_dir / "password"

    @property
    def kafka_password_file(self) -> Path:
        """The Kafka clients' SCRAM password, made at the first `up` (mode 0600)."""
        return self.kafka_dir / "password"

    @property
    def tls_dir(self) -> Path:
        """The stack's CA (ca.pem, ca.key) and the broker's keystore (kafka.pem), all 0600."""
        return self.state_dir / "tls"

    @property
    def ca_file(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def kafka_keystore(self) -> Path:
        return self.tls_dir / "kafka.pem"

    @property
    def mongodb_cert_file(self) -> Path:
        """FerretDB's TLS certificate (from the stack's CA) and, beside it, its key."""
        return self.tls_dir / "mongodb-cert.pem"

    @property
    def mongodb_key_file(self) -> Path:
        return self.tls_dir / "mongodb-key.pem"

    @property
    def kafka_internal_address(self) -> str:
        return f"{HOST}:{self.kafka_internal_port}"

    @property
    def endpoints(self) -> Endpoints:
        address = f"{HOST}:{self.mongodb_port}"
        try:
            password = self.password_file.read_text().strip()
        except FileNotFoundError:  # not started yet, or a server without authentication
            uri = f"mongodb://{address}"
        else:
            # FerretDB: a login, over TLS only, verified against the stack's CA.
            uri = (
                f"mongodb://{MONGODB_USER}:{password}@{address}/?authSource={MONGODB_AUTH_DB}"
                f"&tls=true&tlsCAFile={quote(str(self.ca_file), safe='/')}"
            )
        try:
            kafka_password = self.kafka_password_file.read_text().strip()
        except FileNotFoundError:  # not started yet
            kafka_password = ""
        return Endpoints(
            kafka_bootstrap_servers=f"{HOST}:{self.kafka_port}",
            mongodb_uri=uri,
            kafka_password=kafka_password,
            kafka_ca_file=str(self.ca_file) if kafka_password else "",
        )


@dataclass(frozen=True)
class Endpoints:
    """Where the running services answer, as the pipeline's settings name them."""

    kafka_bootstrap_servers: str
    mongodb_uri: str
    # SASL_SSL (SCRAM-SHA-512 as KAFKA_USER, the stack's CA) when set; PLAINTEXT when empty.
    kafka_password: str = field(default="", repr=False)
    kafka_ca_file: str = ""

    def env(self) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "MONGODB_URI": self.mongodb_uri,
        }
        if self.kafka_password:
            env |= {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_USERNAME": KAFKA_USER,
                "KAFKA_PASSWORD": self.kafka_password,
                "KAFKA_CA_FILE": self.kafka_ca_file,
            }
        return env

    def settings(self, base: Settings | None = None) -> Settings:
        """``base`` (default: from the environment) pointed at these services, logins included."""
        return replace(base or Settings.from_env(), **{k.lower(): v for k, v in self.env().items()})

    def env_lines(self, export: bool = False, reveal: bool = True) -> list[str]:
        """`NAME=value` lines; without ``reveal`` the passwords read as `****`."""
        prefix = "export " if export else ""
        env = self.env()
        if not reveal:
            env["MONGODB_URI"] = re.sub(r"(://[^:/@]+:)[^@]+@", r"\1****@", env["MONGODB_URI"])
            if "KAFKA_PASSWORD" in env:
                env["KAFKA_PASSWORD"] = "****"
        return [f"{prefix}{name}={shlex.quote(value)}" for name, value in env.items()]


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
