"""`PrometheusWorker`: Gunicorn's sync worker, metered."""

from __future__ import annotations

from typing import Any

from gunicorn.workers.sync import SyncWorker

from .instrument import MeteredWorker


class PrometheusWorker(MeteredWorker, SyncWorker):
    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> Any:
        meter = self.meter
        meter.begin(req)
        try:
            return super().handle_request(listener, req, client, addr)
        except BaseException as exc:
            meter.fail(req, exc)
            raise
        finally:
            meter.end()
