"""`PrometheusThreadWorker`: Gunicorn's gthread worker, metered."""

from gunicorn.workers.gthread import ThreadWorker

from .instrument import MeteredWorker, metered


@metered(ThreadWorker.handle_request, getattr(ThreadWorker, "handle_http2_request", None))
class PrometheusThreadWorker(MeteredWorker, ThreadWorker):
    pass
