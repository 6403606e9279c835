"""Settings read from the environment: the same names in a container, on a VM and in tests.

On a VM they come from /etc/appliance/appliance.env (written by cloud-init); see DESIGN.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

# The one SASL mechanism the brokers enable (Kafka keeps SCRAM credentials in its metadata log).
KAFKA_SASL_MECHANISM = "SCRAM-SHA-512"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "localhost:9092"
    # PLAINTEXT, or SASL_SSL: SCRAM-SHA-512 with this user and password, over TLS verified
    # against this CA file (PEM) and the broker's host name.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_username: str = ""
    kafka_password: str = field(default="", repr=False)
    kafka_ca_file: str = ""
    mongodb_uri: str = "mongodb://localhost:27017"
    mongodb_database: str = "iot"
    mongodb_collection: str = "images"
    inference_url: str = "http://localhost:8000"
    device_id: str = "camera-00"
    topic_images: str = "images"
    topic_predictions: str = "predictions"
    topic_dlq: str = "images.dlq"
    topic_partitions: int = 3
    group_db: str = "appliance-db"
    group_inference: str = "appliance-inference"
    db_batch_size: int = 500
    inference_batch_size: int = 64
    # Bytes of a base64-decoded image and decoded pixels the consumers and server accept.
    max_image_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096

    def own_names(self, tag: str, prefix: str = "") -> Settings:
        """These settings with topics, consumer groups and a collection of a run's own, so that
        runs sharing a broker and a database never see each other's messages."""
        return replace(
            self,
            topic_images=f"{prefix}images-{tag}",
            topic_predictions=f"{prefix}predictions-{tag}",
            topic_dlq=f"{prefix}images.dlq-{tag}",
            group_db=f"{prefix}db-{tag}",
            group_inference=f"{prefix}inference-{tag}",
            mongodb_collection=f"{prefix.replace('-', '_')}images_{tag}",
        )

    def kafka_options(self) -> dict[str, object]:
        """What every Kafka client of the pipeline passes on top of its own options."""
        options: dict[str, object] = {"bootstrap_servers": self.kafka_bootstrap_servers}
        protocol = self.kafka_security_protocol.upper()
        if protocol == "PLAINTEXT":
            return options
        if protocol != "SASL_SSL":
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL must be PLAINTEXT or SASL_SSL, got {protocol!r}"
            )
        missing = [
            name.upper()
            for name in ("kafka_username", "kafka_password", "kafka_ca_file")
            if not getattr(self, name)
        ]
        if missing:
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL=SASL_SSL needs {', '.join(missing)}")
        return {
            **options,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": KAFKA_SASL_MECHANISM,
            "sasl_plain_username": self.kafka_username,
            "sasl_plain_password": self.kafka_password,
            "ssl_cafile": self.kafka_ca_file,
            "ssl_check_hostname": True,
        }

    def to_env(self) -> dict[str, str]:
        """The settings as the environment variables :meth:`from_env` reads."""
        return {f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            if f.type == "int":
                try:
                    number = int(raw)
                except ValueError:
                    raise ConfigError(f"{f.name.upper()} must be an integer, got {raw!r}") from None
                if number <= 0:
                    raise ConfigError(f"{f.name.upper()} must be positive, got {number}")
                values[f.name] = number
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]
