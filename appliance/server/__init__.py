"""The ResNet50 inference server: a Flask app under Gunicorn with a per-worker micro-batcher.

Modules: ``app`` (routes and settings), ``batcher`` (groups concurrent requests into one model
call), ``metrics`` (Prometheus, multiprocess-safe), ``gunicorn_conf`` and ``wsgi`` (what Gunicorn
loads), ``run`` (the ``appliance serve`` subcommand).
"""
