"""The ResNet50 inference server: a Flask app under Gunicorn with a per-worker micro-batcher.

Modules: ``app`` (routes and JSON errors), ``settings`` (the environment variables),
``request_parsing`` (a body to model input), ``inference`` (the worker's model, loaded in the
background), ``batcher`` (groups concurrent requests into one model call), ``backends``
(TensorFlow or OpenVINO), ``metrics`` (Prometheus, multiprocess-safe), ``gunicorn_conf`` and
``wsgi`` (what Gunicorn loads), ``process`` (Gunicorn as a child process), ``run`` (the
``appliance serve`` subcommand).
"""
