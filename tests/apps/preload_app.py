"""An application whose prometheus_client metrics are made when it is
imported: with --preload, in the master, before any worker is forked."""

import os

from prometheus_client import Counter, Gauge

ORDERS = Counter("app_orders", "Orders taken.")
IMPORTED_BY = Gauge("app_imported_by_pid", "The process that imported the application.",
                    multiprocess_mode="max")
IMPORTED_BY.set(os.getpid())


def app(environ, start_response):
    ORDERS.inc()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
