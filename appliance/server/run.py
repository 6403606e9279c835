"""``appliance serve``: run the inference server under Gunicorn with the package's config.

Options override the environment variables of the same meaning (``--model`` sets ``MODEL_PATH``,
and so on); then the process becomes Gunicorn (exec), so signals from Docker or systemd reach it
directly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from appliance.config import ConfigError
from appliance.server.backends import BACKENDS

log = logging.getLogger(__name__)

CONFIG_PATH = Path(__file__).with_name("gunicorn_conf.py")
WSGI_APP = "appliance.server.wsgi:app"

# option dest -> environment variable it overrides
OPTION_ENV: dict[str, str] = {
    "model": "MODEL_PATH",
    "bind": "SERVER_BIND",
    "workers": "SERVER_WORKERS",
    "threads": "SERVER_THREADS",
    "timeout": "SERVER_TIMEOUT",
    "max_batch_size": "MAX_BATCH_SIZE",
    "max_batch_wait_ms": "MAX_BATCH_WAIT_MS",
    "max_body_bytes": "MAX_BODY_BYTES",
    "max_image_bytes": "MAX_IMAGE_BYTES",
    "max_image_pixels": "MAX_IMAGE_PIXELS",
    "max_batch_images": "MAX_BATCH_IMAGES",
    "model_threads": "MODEL_THREADS",
    "inference_mode": "INFERENCE_MODE",
    "backend": "BACKEND",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", help="model artifact path, X or X.keras with X.json beside it [MODEL_PATH]")
    add("--bind", help="HOST:PORT to listen on [SERVER_BIND, default 0.0.0.0:8000]")
    add("--workers", type=int, help="worker processes [SERVER_WORKERS, default: cores, max 4]")
    add("--threads", type=int, help="request threads per worker [SERVER_THREADS, default 64]")
    add("--timeout", type=int, help="worker silence timeout in s [SERVER_TIMEOUT, default 120]")
    add("--max-batch-size", type=int, help="images per model call [MAX_BATCH_SIZE, default 64]")
    add(
        "--max-batch-wait-ms",
        type=float,
        help="how long a batch waits to fill up [MAX_BATCH_WAIT_MS, default 5]",
    )
    add("--max-body-bytes", type=int, help="request body limit [MAX_BODY_BYTES, default 32 MiB]")
    add("--max-image-bytes", type=int, help="file size limit per image [MAX_IMAGE_BYTES]")
    add("--max-image-pixels", type=int, help="pixel limit per image [MAX_IMAGE_PIXELS]")
    add(
        "--max-batch-images",
        type=int,
        help="images per /predict/batch request [MAX_BATCH_IMAGES, default 256]",
    )
    add(
        "--model-threads",
        type=int,
        help="TensorFlow threads per worker [MODEL_THREADS, default: cores // workers]",
    )
    add(
        "--inference-mode",
        choices=("batched", "naive"),
        help="naive: Keras predict() per request, a benchmark baseline [INFERENCE_MODE]",
    )
    add(
        "--backend",
        choices=BACKENDS,
        help="what runs the model: tensorflow (default, the reference) or openvino (the same "
        "weights compiled for this CPU; needs the runtimes extra) [BACKEND]",
    )


def server_env(args: argparse.Namespace, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Gunicorn gets: ``base`` (default: ours) with the given options applied."""
    env = dict(os.environ if base is None else base)
    for dest, name in OPTION_ENV.items():
        value = getattr(args, dest, None)
        if value is not None:
            env[name] = str(value)
    return env


def gunicorn_argv() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", str(CONFIG_PATH), WSGI_APP]


def check_env(env: Mapping[str, str]) -> None:
    """Refuse to start on settings a worker would fail on, naming the setting."""
    from appliance.model import artifact_paths
    from appliance.server.settings import ServerSettings

    settings = ServerSettings.from_env(env)
    if not settings.model_path:
        raise ConfigError("MODEL_PATH is not set (or pass --model): the model artifact's path")
    model_file, meta_file = artifact_paths(settings.model_path)
    for path in (model_file, meta_file):
        if not path.is_file():
            raise ConfigError(f"MODEL_PATH: {path} does not exist")
    for name in ("SERVER_WORKERS", "SERVER_THREADS", "SERVER_TIMEOUT"):
        raw = env.get(name, "").strip()
        if raw and not (raw.isdigit() and int(raw) > 0):
            raise ConfigError(f"{name} must be a positive integer, got {raw!r}")


def run(args: argparse.Namespace) -> int:
    env = server_env(args)
    # `appliance --log-level X serve` reaches Gunicorn and the workers unless LOG_LEVEL says else.
    env.setdefault("LOG_LEVEL", getattr(args, "log_level", "INFO"))
    # The check below imports the metrics module, and prometheus_client opens its files in this
    # folder at import: a folder named but not yet made would crash the start.
    multiproc_dir = env.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if multiproc_dir:
        Path(multiproc_dir).mkdir(parents=True, exist_ok=True)
    check_env(env)
    argv = gunicorn_argv()
    log.info("exec %s", " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 0  # not reached: exec replaces this process
