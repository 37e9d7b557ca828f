"""`PrometheusASGIWorker`: Gunicorn's own ASGI worker (newer Gunicorn), metered."""

try:
    from gunicorn.workers.gasgi import ASGIWorker
except ImportError as exc:
    raise ImportError(
        "PrometheusASGIWorker needs a Gunicorn with its own ASGI worker "
        "(gunicorn.workers.gasgi): pip install -U gunicorn"
    ) from exc

from .asgi import MeteredASGIWorker


class PrometheusASGIWorker(MeteredASGIWorker, ASGIWorker):
    app_attribute = "asgi"
