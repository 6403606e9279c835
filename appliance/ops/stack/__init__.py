"""`appliance stack`: the whole pipeline as containers on one Docker host.

``up`` starts MongoDB, Kafka, the inference server, both consumers and (unless told not to) the
cameras, as the images from ``make containers``, on a Docker network of their own, each container
configured only through the env file the VMs get (``--env-file``) and restarted by Docker if it
fails. ``status`` shows each container's state and health and the pipeline's counts; ``down``
removes it all. ``env`` renders that env file for one host; ``counts`` is what ``status`` runs
inside a container of the stack (it needs the stack's network).

Containers are named ``<project>-<role>`` and reach each other by role (``kafka``, ``mongodb``,
``ml-server``): the rendered env file names those as the peers. Only the ``docker`` CLI is used.

The names below are re-exported from the modules that define them; to replace one in a test,
patch it in the module that uses it (``lifecycle.docker``), not here.
"""

from appliance.ops.counts import Counts
from appliance.ops.stack import tls
from appliance.ops.stack.cli import add_arguments, run
from appliance.ops.stack.docker_cli import (
    container_image_id,
    docker,
    engine_problem,
    image_id,
    inspect_container,
    logs_tail,
    missing_images,
)
from appliance.ops.stack.envfile import check_env, load_env, parse_env_file, render_env, write_env
from appliance.ops.stack.lifecycle import (
    counts,
    down,
    producer_options,
    run_arguments,
    secret_mounts,
    start_producer,
    start_service,
    statuses,
    up,
    wait_healthy,
)
from appliance.ops.stack.model import (
    CONSUMERS,
    DATA_MOUNT,
    DEFAULT_ENV_FILE,
    DEFAULT_IMAGE_PREFIX,
    DEFAULT_PROJECT,
    DEFAULT_TEMPLATE,
    DEFAULT_UP_TIMEOUT_S,
    ENV_LINE,
    INFRASTRUCTURE,
    LABEL_ROLE,
    LABEL_STACK,
    LOCAL_PEERS,
    LOG_TAIL_LINES,
    MAX_RESTARTS_DURING_UP,
    PRODUCER,
    PROGRESS_INTERVAL_S,
    REQUIRED_SETTINGS,
    SERVICES,
    ContainerStatus,
    Service,
    Stack,
    StackError,
    local_settings,
)

__all__ = [
    "CONSUMERS",
    "DATA_MOUNT",
    "DEFAULT_ENV_FILE",
    "DEFAULT_IMAGE_PREFIX",
    "DEFAULT_PROJECT",
    "DEFAULT_TEMPLATE",
    "DEFAULT_UP_TIMEOUT_S",
    "ENV_LINE",
    "INFRASTRUCTURE",
    "LABEL_ROLE",
    "LABEL_STACK",
    "LOCAL_PEERS",
    "LOG_TAIL_LINES",
    "MAX_RESTARTS_DURING_UP",
    "PRODUCER",
    "PROGRESS_INTERVAL_S",
    "REQUIRED_SETTINGS",
    "SERVICES",
    "ContainerStatus",
    "Counts",
    "Service",
    "Stack",
    "StackError",
    "add_arguments",
    "check_env",
    "container_image_id",
    "counts",
    "docker",
    "down",
    "engine_problem",
    "image_id",
    "inspect_container",
    "load_env",
    "local_settings",
    "logs_tail",
    "missing_images",
    "parse_env_file",
    "producer_options",
    "render_env",
    "run",
    "run_arguments",
    "secret_mounts",
    "start_producer",
    "start_service",
    "statuses",
    "tls",
    "up",
    "wait_healthy",
    "write_env",
]
