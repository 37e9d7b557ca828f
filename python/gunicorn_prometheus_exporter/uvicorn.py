"""`PrometheusUvicornWorker`: uvicorn's Gunicorn worker, metered."""

try:
    from uvicorn.workers import UvicornWorker
except ImportError as exc:
    raise ImportError(
        "PrometheusUvicornWorker needs uvicorn: pip install uvicorn"
    ) from exc

from .asgi import MeteredASGI
from .instrument import MeteredWorker


class PrometheusUvicornWorker(MeteredWorker, UvicornWorker):
    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = MeteredASGI(self.wsgi, self.meter)
