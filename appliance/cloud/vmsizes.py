"""What each local VM gets: its size, and settings that help it along under software emulation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    memory_mib: int
    cpus: int


# 9.5 GiB for all four, of this machine's 24: TensorFlow and the model want the most; the broker's
# JVM (heap up to 1 GiB) and two consumers next.
SIZES = {
    "mongodb": Size(1536, 1),
    "ml-server": Size(4096, 2),
    "kafka": Size(3072, 2),
    "producer": Size(1024, 1),
}

# Under software emulation (tcg) Docker's health checks (a `docker exec` of Python every 10 s per
# container) took most of a VM's CPU: the kafka VM's three checks kept its load near 15 and
# starved the broker. Rarer checks with more time each, unless --set says otherwise.
EMULATION_SETTINGS = {"HEALTHCHECK_INTERVAL": "60s", "HEALTHCHECK_TIMEOUT": "60s"}
# And per image, under emulation only:
# - ml-server: one Gunicorn worker; each loaded the model for about 11 min, side by side.
# - kafka: the JVM's client compiler only (C2's warm-up compiles took the CPU the broker needed),
#   and 30 s, not 9 s, before the controller fences a broker whose heartbeats are late (a starved
#   broker fenced itself out of its own single-node cluster).
EMULATION_ROLE_SETTINGS = {
    "ml-server": {"SERVER_WORKERS": "1"},
    "kafka": {
        # The ml-server VM labelled about 0.3 img/s (3.1 s per image: TCG emulates AVX2), so a
        # request of 64 images outlasted the inference client's 60 s timeout every time.
        "INFERENCE_BATCH_SIZE": "8",
        "KAFKA_JVM_OPTS": "-XX:TieredStopAtLevel=1",
        "KAFKA_CFG_BROKER_SESSION_TIMEOUT_MS": "30000",
    },
}


def emulation_settings(
    given: dict[str, str] | None, given_roles: dict[str, dict[str, str]] | None
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Settings and per-image settings with the emulation defaults under them: a given one wins."""
    given, roles = given or {}, dict(given_roles or {})
    for role, defaults in EMULATION_ROLE_SETTINGS.items():
        kept = {k: v for k, v in defaults.items() if k not in given}
        roles[role] = {**kept, **roles.get(role, {})}
    return {**EMULATION_SETTINGS, **given}, roles
