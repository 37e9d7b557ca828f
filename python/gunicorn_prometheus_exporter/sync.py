"""`PrometheusWorker`: Gunicorn's sync worker, metered."""

from gunicorn.workers.sync import SyncWorker

from .instrument import MeteredWorker, metered


class PrometheusWorker(MeteredWorker, SyncWorker):
    handle_request = metered(SyncWorker.handle_request)
