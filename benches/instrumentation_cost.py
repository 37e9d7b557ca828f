"""Per-request cost of the instrumentation inside a worker, Python calls included.

Drives the real worker class's `handle_request` wrapper and the metered
`log.access` over a stand-in for Gunicorn's own request handling (which calls
`log.access` once, as Gunicorn does), against the same stand-in without the
exporter. Prints nanoseconds per request.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from gunicorn.workers.sync import SyncWorker
from gunicorn_prometheus_exporter import _core
from gunicorn_prometheus_exporter.instrument import MeteredLog, metered
from gunicorn_prometheus_exporter.sync import PrometheusWorker


class Req:
    method = "GET"


class Resp:
    status = "200 OK"
    sent = 6


class QuietLog:
    def access(self, resp, req, environ, request_time):
        pass


ENVIRON = {"CONTENT_LENGTH": "0", "REQUEST_METHOD": "GET"}


class GunicornStandIn(SyncWorker):
    """What SyncWorker.handle_request does that matters here: one log.access."""

    def handle_request(self, listener, req, client, addr):
        self.log.access(Resp, req, ENVIRON, None)


class Metered(PrometheusWorker, GunicornStandIn):
    """PrometheusWorker's wrapper (the same `metered` factory) around the stand-in."""

    handle_request = metered(GunicornStandIn.handle_request)


def per_request_ns(worker, n: int) -> float:
    handle = worker.handle_request
    best = float("inf")
    for _ in range(7):
        reqs = [Req() for _ in range(n)]
        start = time.perf_counter_ns()
        for req in reqs:
            handle(None, req, None, None)
        best = min(best, (time.perf_counter_ns() - start) / n)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    directory = tempfile.mkdtemp(prefix="gpe-bench-")
    plain = object.__new__(GunicornStandIn)
    plain.log = QuietLog()
    metered = object.__new__(Metered)
    metered.meter = _core.WorkerMeter(directory, os.getpid(), 1, "gunicorn",
                                      [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                                       0.75, 1.0, 2.5, 5.0, 7.5, 10.0], 1.0)
    metered.log = MeteredLog(QuietLog(), metered.meter)
    base = per_request_ns(plain, n)
    with_meter = per_request_ns(metered, n)
    print(f"{with_meter - base:.0f}")


if __name__ == "__main__":
    main()
