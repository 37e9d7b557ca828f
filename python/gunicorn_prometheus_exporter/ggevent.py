"""`PrometheusGeventWorker`: Gunicorn's gevent worker, metered."""

from .optional import missing

try:
    from gunicorn.workers.ggevent import GeventWorker
except (ImportError, RuntimeError) as exc:  # Gunicorn raises RuntimeError for a missing gevent
    raise missing("PrometheusGeventWorker", exc, {"gevent": "gevent"}) from exc

from .instrument import MeteredWorker, metered


class PrometheusGeventWorker(MeteredWorker, GeventWorker):
    handle_request = metered(GeventWorker.handle_request)
    if hasattr(GeventWorker, "handle_http2_request"):
        handle_http2_request = metered(GeventWorker.handle_http2_request)
