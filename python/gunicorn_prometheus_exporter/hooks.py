"""Gunicorn server hooks, for configurations that prefer to name them::

    # gunicorn.conf.py
    from gunicorn_prometheus_exporter.hooks import when_ready, child_exit

Each is safe together with the zero-configuration path: nothing starts twice.
"""

from __future__ import annotations

from typing import Any

from .master import master


def when_ready(server: Any) -> None:
    """Start the exporter in the master (idempotent)."""
    state = master()
    state.setup(server.cfg)
    state.when_ready(server)


def child_exit(server: Any, worker: Any) -> None:
    """A worker was reaped: free its worker_id, fold its files, count the restart."""
    master().child_exit(server, worker)


def worker_abort(worker: Any) -> None:
    """A worker timed out; its meter already records the aborted request."""


def on_exit(server: Any) -> None:
    """The master is exiting; the private directory is removed at exit."""


# Names of the older Python package.
default_when_ready = when_ready
default_child_exit = child_exit
default_worker_abort = worker_abort
default_on_exit = on_exit

__all__ = [
    "when_ready",
    "child_exit",
    "worker_abort",
    "on_exit",
    "default_when_ready",
    "default_child_exit",
    "default_worker_abort",
    "default_on_exit",
]
