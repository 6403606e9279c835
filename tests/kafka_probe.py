"""A script that tries the deployment's Kafka as a neighbour would: no login, a wrong password, a
CA other than the deployment's, then the right login. Run inside a container of the deployment
(its Python has the appliance package and its env the login), so it reaches the broker by the
same network path as the consumers. It prints one line per try."""

from __future__ import annotations

EXPECTED = ["no login: refused", "wrong password: refused", "untrusted CA: refused",
            "right login: sent"]  # fmt: skip


def refusal_script(other_ca_pem: str, topic: str) -> str:
    return f"""
import sys, tempfile
from kafka import KafkaProducer
from appliance.config import Settings
other = tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False)
other.write({other_ca_pem!r})
other.close()
good = Settings.from_env().kafka_options()
cases = [
    ("no login", {{"bootstrap_servers": good["bootstrap_servers"]}}),
    ("wrong password", {{**good, "sasl_plain_password": "not-the-password"}}),
    ("untrusted CA", {{**good, "ssl_cafile": other.name}}),
    ("right login", good),
]
for name, options in cases:
    try:
        producer = KafkaProducer(max_block_ms=10000, **options)
        producer.send({topic!r}, b"probe").get(timeout=15)
        producer.close()
        print(f"{{name}}: sent")
    except Exception as exc:
        print(f"{{name}}: refused")
        print(f"{{name}}: {{type(exc).__name__}}", file=sys.stderr)
"""
