"""Prometheus metrics for every Gunicorn worker and the master, from a Rust core.

Use it with one flag::

    gunicorn --worker-class gunicorn_prometheus_exporter.PrometheusWorker app:app
    curl http://127.0.0.1:9091/metrics
"""

from ._core import __version__
from .sync import PrometheusWorker

__all__ = ["PrometheusWorker", "__version__"]
