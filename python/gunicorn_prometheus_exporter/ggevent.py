"""`PrometheusGeventWorker`: Gunicorn's gevent worker, metered."""

from .optional import missing

try:
    from gunicorn.workers.ggevent import GeventWorker
except (ImportError, RuntimeError) as exc:  # Gunicorn raises RuntimeError for a missing gevent
    raise missing("PrometheusGeventWorker", exc, {"gevent": "gevent"}) from exc

from .instrument import MeteredWorker, metered


@metered(GeventWorker.handle_request, getattr(GeventWorker, "handle_http2_request", None))
class PrometheusGeventWorker(MeteredWorker, GeventWorker):
    pass
