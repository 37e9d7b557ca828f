"""Prometheus metrics for every Gunicorn worker and the master, from a Rust core.

Use it with one flag::

    gunicorn --worker-class gunicorn_prometheus_exporter.PrometheusWorker app:app
    curl http://127.0.0.1:9091/metrics

Worker classes whose base needs an optional package (gevent, uvicorn, a
Gunicorn with its own ASGI worker) are imported on first use, so that a
missing package breaks only that class, with an ImportError naming it.
"""

from typing import Any

from ._core import __version__, exclude_request
from .gthread import PrometheusThreadWorker
from .legacy import load_yaml_config
from .sync import PrometheusWorker

_OPTIONAL = {
    "PrometheusGeventWorker": ".ggevent",
    "PrometheusASGIWorker": ".gasgi",
    "PrometheusUvicornWorker": ".uvicorn",
    "PrometheusEventletWorker": ".geventlet",  # the 0.2.4 package's name
}

__all__ = ["PrometheusWorker", "PrometheusThreadWorker", *_OPTIONAL, "load_yaml_config",
           "exclude_request", "__version__"]


def __getattr__(name: str) -> Any:
    module = _OPTIONAL.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
