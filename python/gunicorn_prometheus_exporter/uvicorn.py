"""`PrometheusUvicornWorker`: uvicorn's Gunicorn worker, metered."""

try:
    from uvicorn.workers import UvicornWorker
except ImportError as exc:
    raise ImportError("PrometheusUvicornWorker needs uvicorn: pip install uvicorn") from exc

from .asgi import MeteredASGIWorker


class PrometheusUvicornWorker(MeteredASGIWorker, UvicornWorker):
    pass
