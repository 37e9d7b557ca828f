"""`PrometheusWorker`: Gunicorn's sync worker, metered."""

from __future__ import annotations

from typing import Any

from gunicorn.workers.sync import SyncWorker

from .instrument import MeteredWorker, metered


@metered(SyncWorker.handle_request)
class PrometheusWorker(MeteredWorker, SyncWorker):
    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Gunicorn runs its threaded worker for `sync` with --threads N>1, but
        # only for its own class names: do the same for this class (not for
        # subclasses, as Gunicorn does not for subclasses of SyncWorker).
        if cls is PrometheusWorker and _threads(args, kwargs) > 1:
            from .gthread import PrometheusThreadWorker

            return PrometheusThreadWorker(*args, **kwargs)
        return super().__new__(cls)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        if cls is PrometheusWorker and cfg.threads > 1:
            from .gthread import PrometheusThreadWorker

            PrometheusThreadWorker.check_config(cfg, log)
        else:
            super().check_config(cfg, log)


def _threads(args: tuple, kwargs: dict) -> int:
    # Worker(age, ppid, sockets, app, timeout, cfg, log), as the arbiter builds it.
    cfg = kwargs.get("cfg", args[5] if len(args) > 5 else None)
    return getattr(cfg, "threads", 1) or 1
