"""`PrometheusThreadWorker`: Gunicorn's gthread worker, metered."""

from gunicorn.workers.gthread import ThreadWorker

from .instrument import MeteredWorker, metered


class PrometheusThreadWorker(MeteredWorker, ThreadWorker):
    handle_request = metered(ThreadWorker.handle_request)
    if hasattr(ThreadWorker, "handle_http2_request"):
        handle_http2_request = metered(ThreadWorker.handle_http2_request)
