"""Per-request cost of the instrumentation in a worker, Python calls included.

Each mode drives a stand-in for Gunicorn's SyncWorker.handle_request (which
calls `log.access` once, as Gunicorn does) N times:

  plain              the stand-in alone
  this               this project's PrometheusWorker (handler and log metered by the core),
                     with a route template and the kernel's queue time (one
                     getsockopt on a real TCP socket), as a Flask app on TCP has
  this_no_signals    the same without route nor queue time (no socket: a Unix
                     listener, a framework that matched nothing)
  pypi024            the Python package gunicorn-prometheus-exporter 0.2.4
  prometheus_client  prometheus_client in multiprocess mode recording the same
                     series as this project (requests, duration, sizes,
                     in flight, busy time)

`python request_cost.py MODE N` runs the loop (run it under callgrind and take
instructions per request from two values of N); `--wall MODE` prints ns per
request from the wall clock instead.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="gpe-cost-"))

from gunicorn.workers.sync import SyncWorker  # noqa: E402

DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0]
SIZE_BUCKETS = [100.0, 1000.0, 10_000.0, 100_000.0, 1e6, 1e7, 1e8]
ENVIRON = {"CONTENT_LENGTH": "0", "REQUEST_METHOD": "GET"}


class Req:
    """Gunicorn's request: `method` and `path` are attributes of each one."""

    def __init__(self):
        self.method = "GET"
        self.path = "/"


class Resp:
    """Gunicorn's response as `log.access` gets it: attributes of the instance."""

    def __init__(self, sock=None):
        self.status = "200 OK"
        self.sent = 6
        self.sock = sock


_OPEN: list[socket.socket] = []


def tcp_pair() -> socket.socket:
    """The server side of a loopback TCP connection that received a request."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        server, _ = listener.accept()
    _OPEN.append(client)  # kept open as long as the server side
    return server


RESP = Resp()
SIGNALS_RESP = Resp(tcp_pair())


# Route, queue time (the kernel's, from a real TCP socket) and an exemplar.
SIGNALS_ENVIRON = {**ENVIRON, "gunicorn_prometheus_exporter.route": "/users/<int:uid>",
                   "HTTP_TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


class QuietLog:
    def access(self, resp, req, environ, request_time):
        pass

    def __getattr__(self, name):  # debug(), info(): silent
        return lambda *args, **kwargs: None


class StandIn(SyncWorker):
    """What SyncWorker.handle_request does that matters here: one log.access."""

    def handle_request(self, listener, req, client, addr):
        self.log.access(RESP, req, ENVIRON, None)


def plain():
    worker = object.__new__(StandIn)
    worker.log = QuietLog()
    return worker.handle_request


def this():
    return _this(signals=True)


def this_no_signals():
    return _this(signals=False)


def _this(signals: bool):
    from gunicorn_prometheus_exporter import _core
    from gunicorn_prometheus_exporter.instrument import metered
    from gunicorn_prometheus_exporter.sync import PrometheusWorker

    @metered(StandIn.handle_request)
    class Metered(PrometheusWorker, StandIn):
        pass

    worker = object.__new__(Metered)
    settings = _core.Settings.from_mapping(
        {"PROMETHEUS_DURATION_BUCKETS": ",".join(map(str, DURATION_BUCKETS))})
    worker.meter = _core.WorkerMeter(settings, os.environ["PROMETHEUS_MULTIPROC_DIR"],
                                     os.getpid(), 1, 1.0)
    _core.meter_requests_with(worker.meter)  # as MeteredWorker.init_process does
    worker.log = worker.meter.watch_log(QuietLog())
    if signals:
        class SignalsStandIn(StandIn):
            def handle_request(self, listener, req, client, addr):
                self.log.access(SIGNALS_RESP, req, SIGNALS_ENVIRON, None)

        @metered(SignalsStandIn.handle_request)
        class Signals(PrometheusWorker, SignalsStandIn):
            pass

        worker.__class__ = Signals
    else:
        worker.meter.set_kernel_wait(False)
    return worker.handle_request


def pypi024():
    import psutil
    from gunicorn_prometheus_exporter.plugin import PrometheusWorker

    class Bench(PrometheusWorker, StandIn):
        pass

    worker = object.__new__(Bench)
    worker.log = QuietLog()
    worker.start_time = time.time()
    worker.worker_id = f"worker_1_{int(worker.start_time)}"
    worker.process = psutil.Process()
    worker._request_count = 0
    return worker.handle_request


def prometheus_client():
    from prometheus_client import Counter, Gauge, Histogram

    labels = ["worker_id", "method", "status"]
    requests = Counter("bench_requests", "r", labels)
    duration = Histogram("bench_duration_seconds", "d", labels, buckets=DURATION_BUCKETS)
    request_size = Histogram("bench_request_size_bytes", "q", ["worker_id"], buckets=SIZE_BUCKETS)
    response_size = Histogram("bench_response_size_bytes", "s", ["worker_id"],
                              buckets=SIZE_BUCKETS)
    in_flight = Gauge("bench_in_flight", "i", ["worker_id"], multiprocess_mode="livesum")
    busy = Counter("bench_busy_seconds", "b", ["worker_id"])
    in_flight_1, busy_1 = in_flight.labels("1"), busy.labels("1")
    request_size_1, response_size_1 = request_size.labels("1"), response_size.labels("1")

    class Log(QuietLog):
        def access(self, resp, req, environ, request_time):
            status = resp.status.split(None, 1)[0]
            seconds = time.perf_counter() - req.started
            requests.labels("1", req.method, status).inc()
            duration.labels("1", req.method, status).observe(seconds)
            request_size_1.observe(int(environ.get("CONTENT_LENGTH") or 0))
            response_size_1.observe(resp.sent)

    class Bench(StandIn):
        def handle_request(self, listener, req, client, addr):
            in_flight_1.inc()
            req.started = started = time.perf_counter()
            try:
                return super().handle_request(listener, req, client, addr)
            finally:
                busy_1.inc(time.perf_counter() - started)
                in_flight_1.dec()

    worker = object.__new__(Bench)
    worker.log = Log()
    return worker.handle_request


MODES = {"plain": plain, "this": this, "this_no_signals": this_no_signals, "pypi024": pypi024,
         "prometheus_client": prometheus_client}


def run(handle, n: int) -> None:
    # One request object per request, freed when it is handled, as in
    # Gunicorn. (Building all n first made the garbage collector run during
    # the loop and walk everything each mode had imported: a cost of the
    # harness, which differed between modes by up to 400 instructions.)
    for _ in range(n):
        handle(None, Req(), None, None)


def main() -> None:
    if sys.argv[1] == "--wall":
        mode, n = sys.argv[2], 100_000
        handle, base = MODES[mode](), plain()
        best = {}
        for name, h in (("mode", handle), ("plain", base)):
            times = []
            for _ in range(5):
                start = time.perf_counter_ns()
                run(h, n)
                times.append((time.perf_counter_ns() - start) / n)
            best[name] = min(times)
        print(f"{best['mode'] - best['plain']:.0f}")
        return
    mode, n = sys.argv[1], int(sys.argv[2])
    handle = MODES[mode]()
    run(handle, 200)  # warm-up: first series, caches
    run(handle, n)


if __name__ == "__main__":
    main()
