"""What Gunicorn imports in each worker: ``appliance.server.wsgi:app``.

Imported after the fork (the config never preloads), so every worker builds its own app, starts
loading its own model, and runs its own batcher thread.
"""

from __future__ import annotations

import logging
import os
import sys

from appliance.server.app import create_app

if not logging.getLogger().handlers:
    # Gunicorn configures only its own loggers; ours go to stderr beside them.
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "info").upper(),
        stream=sys.stderr,
        format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )

app = create_app()
