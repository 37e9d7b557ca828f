"""How many requests a worker can serve at once: `worker_concurrency`."""

from __future__ import annotations

from typing import Any


def concurrency(worker: Any) -> int:
    """1 for sync, `--threads` for gthread, `--worker-connections` for the
    async workers, uvicorn's `limit_concurrency` when set."""
    from gunicorn.workers.base_async import AsyncWorker
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker

    cfg = worker.cfg
    if isinstance(worker, ThreadWorker):
        return int(cfg.threads)
    if isinstance(worker, SyncWorker):
        return 1
    if isinstance(worker, AsyncWorker):
        return int(cfg.worker_connections)
    limit = getattr(getattr(worker, "config", None), "limit_concurrency", None)
    return int(limit or cfg.worker_connections)


def has_tcp_listener(worker: Any) -> bool:
    """Whether the kernel can tell this worker's queue time (TCP, not Unix sockets)."""
    import socket

    families = {getattr(getattr(s, "sock", s), "family", None) for s in worker.sockets}
    return bool(families & {socket.AF_INET, socket.AF_INET6})
