"""Whether the services answer: a `ping` to the MongoDB-protocol server, a metadata request (and a
topic) to Kafka, the wait for a starting service to be healthy, and the log tails shown when not."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from appliance.ops.services.config import HEALTH_TOPIC, LOG_TAIL_LINES, ServiceError
from appliance.ops.services.processes import process_alive

log = logging.getLogger(__name__)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"    ({path} is missing)"
    tail = text.splitlines()[-lines:]
    if not tail:
        return f"    ({path} is empty)"
    return "\n".join(f"    {line}" for line in tail)


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


def kafka_problem(
    bootstrap: str,
    timeout_s: float = 5.0,
    create_topic: bool = False,
    login: Mapping[str, object] | None = None,
) -> str | None:
    """None when the broker answers a metadata request (and can create and list a topic).

    ``login``: the client's security options (:meth:`Settings.kafka_options`), for a listener
    that wants SASL_SSL.
    """
    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            **{**(login or {}), "bootstrap_servers": bootstrap},
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
