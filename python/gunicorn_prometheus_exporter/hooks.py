"""Gunicorn server hooks, for configurations that prefer to name them::

    # gunicorn.conf.py
    from gunicorn_prometheus_exporter.hooks import when_ready, child_exit

With these alone, Gunicorn's own `sync` and `gthread` workers are metered:
`when_ready` (which runs before the first worker is spawned) makes the arbiter
spawn their metered subclasses, `PrometheusWorker` and `PrometheusThreadWorker`.
A worker type that cannot be swapped this way is named in one warning line,
with the class to use instead. Each hook is safe together with the
worker-class path: nothing starts twice.

The names of the older package 0.2.4 (`default_when_ready`,
`default_on_starting`, `default_worker_int`, `default_on_exit`,
`default_post_fork`, `redis_when_ready`, `load_yaml_config`, ...) are accepted
too, so its documented gunicorn.conf.py runs unchanged.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from .instrument import MeteredWorker
from .legacy import load_yaml_config
from .master import master

log = logging.getLogger("gunicorn.error")


def on_starting(server: Any) -> None:
    """Start the exporter as early as Gunicorn allows (idempotent)."""
    master().setup(server.cfg)


def when_ready(server: Any) -> None:
    """Start the exporter in the master (idempotent), and make the arbiter
    spawn metered workers."""
    state = master()
    state.setup(server.cfg)
    meter_spawned_workers(server)
    state.when_ready(server)


def child_exit(server: Any, worker: Any) -> None:
    """A worker was reaped: free its worker_id, fold its files, count the restart."""
    master().child_exit(server, worker)


def worker_abort(worker: Any) -> None:
    """A worker timed out; its meter already records the aborted request."""


def worker_int(worker: Any) -> None:
    """A worker got SIGINT or SIGQUIT; its meter needs no flush (its files are
    shared memory)."""


def post_fork(server: Any, worker: Any) -> None:
    """A worker was forked; its meter starts in the worker's `init_process`."""


def on_exit(server: Any) -> None:
    """The master is exiting; the private directory is removed at exit."""


def redis_when_ready(server: Any) -> None:
    """0.2.4's Redis variant: metrics are kept in the multiprocess directory
    here (REDIS_ENABLED is named in the start-up warning)."""
    when_ready(server)


def redis_sidecar_when_ready(server: Any) -> None:
    """0.2.4's sidecar variant: set PROMETHEUS_METRICS_PORT=0 in the
    application's container to leave the serving to the sidecar."""
    when_ready(server)


# Names of the older Python package.
default_on_starting = on_starting
default_when_ready = when_ready
default_child_exit = child_exit
default_worker_abort = worker_abort
default_worker_int = worker_int
default_post_fork = post_fork
default_on_exit = on_exit

__all__ = [
    "on_starting",
    "when_ready",
    "child_exit",
    "worker_abort",
    "worker_int",
    "post_fork",
    "on_exit",
    "default_on_starting",
    "default_when_ready",
    "default_child_exit",
    "default_worker_abort",
    "default_worker_int",
    "default_post_fork",
    "default_on_exit",
    "redis_when_ready",
    "redis_sidecar_when_ready",
    "load_yaml_config",
    "meter_spawned_workers",
]


def meter_spawned_workers(server: Any) -> None:
    """Make the arbiter spawn the metered subclass of Gunicorn's `sync` or
    `gthread` worker, now and after every reload (HUP), which loads the class
    from the configuration again. Other worker types are left alone, with one
    warning line naming the class to use."""
    arbiter_class = type(server)
    if not getattr(arbiter_class, "_prometheus_metering", False):
        server.__class__ = _metering_arbiter(arbiter_class)
    server.worker_class = server.__dict__["worker_class"]  # through the setter


@functools.cache
def _metering_arbiter(base: type) -> type:
    """`base` (Gunicorn's Arbiter), whose `worker_class` attribute stores the
    metered subclass of whatever class it is given."""

    def get(self: Any) -> Any:
        return self.__dict__["worker_class"]

    def put(self: Any, worker_class: Any) -> None:
        self.__dict__["worker_class"] = metered_class(worker_class, self.cfg)

    return type(base.__name__, (base,), {
        "__module__": base.__module__,
        "__doc__": base.__doc__,
        "_prometheus_metering": True,
        "worker_class": property(get, put),
    })


# Gunicorn's classes that a hook can swap, by module and name.
SWAPPABLE = {
    ("gunicorn.workers.sync", "SyncWorker"): "PrometheusWorker",
    ("gunicorn.workers.gthread", "ThreadWorker"): "PrometheusThreadWorker",
}
# Other worker types, by module and name: the class to use instead.
INSTEAD = {
    ("gunicorn.workers.ggevent", "GeventWorker"): "PrometheusGeventWorker",
    ("gunicorn.workers.gasgi", "ASGIWorker"): "PrometheusASGIWorker",
    ("uvicorn.workers", "UvicornWorker"): "PrometheusUvicornWorker",
    ("uvicorn_worker._workers", "UvicornWorker"): "PrometheusUvicornWorker",
}

_warned: set[tuple[int, str]] = set()


def metered_class(worker_class: Any, cfg: Any) -> Any:
    """The metered class to spawn for `worker_class` (itself if it is metered
    or cannot be swapped)."""
    if not isinstance(worker_class, type) or issubclass(worker_class, MeteredWorker):
        return worker_class
    key = (worker_class.__module__, worker_class.__name__)
    ours = SWAPPABLE.get(key)
    if ours is not None:
        from . import PrometheusThreadWorker, PrometheusWorker

        return {"PrometheusWorker": PrometheusWorker,
                "PrometheusThreadWorker": PrometheusThreadWorker}[ours]
    name = f"{worker_class.__module__}.{worker_class.__qualname__}"
    if (os.getpid(), name) not in _warned:
        _warned.add((os.getpid(), name))
        instead = INSTEAD.get(key)
        if instead is not None:
            advice = f"use --worker-class gunicorn_prometheus_exporter.{instead}"
        else:
            advice = ("base it on gunicorn_prometheus_exporter.PrometheusWorker, "
                      "PrometheusThreadWorker or another Prometheus worker class")
        log.warning("gunicorn_prometheus_exporter: the worker class %s is not metered "
                    "(no request is counted): %s", name, advice)
    return worker_class
