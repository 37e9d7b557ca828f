"""Every worker class counts exactly: mixed statuses, concurrency, busy time."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import request, request_in_background

PACKAGE = "gunicorn_prometheus_exporter"

# worker class, extra Gunicorn arguments, application
WORKER_TYPES = {
    "sync": ("PrometheusWorker", [], "wsgi_app:app"),
    "gthread": ("PrometheusThreadWorker", ["--threads", "4"], "wsgi_app:app"),
    "gevent": ("PrometheusGeventWorker", ["--worker-connections", "100"], "wsgi_app:app"),
    "asgi": ("PrometheusASGIWorker", [], "asgi_app:app"),
    "uvicorn": ("PrometheusUvicornWorker", [], "asgi_app:app"),
}

MIX = [("GET", "/", None, 200), ("POST", "/echo", b"y" * 700, 200),
       ("GET", "/status/404", None, 404), ("GET", "/raise", None, 500),
       ("DELETE", "/status/204", None, 204), ("PATCH", "/sleep/0.05", b"z", 200)]


def start(gunicorn, kind: str, workers: int = 2, extra: list[str] | None = None):
    worker, args, app = WORKER_TYPES[kind]
    return gunicorn(["--worker-class", f"{PACKAGE}.{worker}", *args, *(extra or [])],
                    app=app, workers=workers)


@pytest.mark.parametrize("kind", list(WORKER_TYPES))
def test_every_worker_type_counts_exactly(gunicorn, kind):
    g = start(gunicorn, kind)
    rounds = 8

    def one(i: int) -> tuple[str, int]:
        method, path, body, want = MIX[i % len(MIX)]
        status, _ = request(g.port, method, path, body)
        assert status == want, (kind, method, path, status)
        return method, status

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # some requests run concurrently
        results = list(pool.map(one, range(rounds * len(MIX))))
    wall = time.monotonic() - started
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == len(results)
    for method, status in set(results):
        n = results.count((method, status))
        assert m.get("gunicorn_worker_requests_total", method=method, status=str(status)) == n
        assert m.get("gunicorn_worker_request_duration_seconds_count",
                     method=method, status=str(status)) == n
    assert m.get("gunicorn_worker_failed_requests_total", error_type="AppFailure") == rounds
    assert m.get("gunicorn_worker_request_size_bytes_sum") == rounds * 701
    assert m.get("gunicorn_worker_requests_in_flight") == 0
    busy = m.get("gunicorn_worker_busy_seconds_total")
    # Each worker is busy at least while its sleeping requests run, and at most
    # for the whole test.
    assert rounds * 0.05 / 8 <= busy <= 2 * wall


@pytest.mark.parametrize("kind", ["gthread", "gevent", "asgi", "uvicorn"])
def test_in_flight_counts_concurrent_requests(gunicorn, kind):
    g = start(gunicorn, kind, workers=1)
    clients = [request_in_background(g.port, "/sleep/2") for _ in range(3)]
    try:
        deadline = time.monotonic() + 10
        while g.scrape().get("gunicorn_worker_requests_in_flight") < 3:
            assert time.monotonic() < deadline, "requests never all in flight"
            time.sleep(0.05)
        before = time.monotonic()
        first = g.scrape().get("gunicorn_worker_busy_seconds_total")
        time.sleep(0.5)
        second = g.scrape().get("gunicorn_worker_busy_seconds_total")
        wall = time.monotonic() - before
        # Three requests in flight at once: the clock runs once, not three times.
        assert 0.4 <= second - first <= wall
    finally:
        for c in clients:
            c.wait(timeout=20)
    assert g.scrape_idle().get("gunicorn_worker_requests_total", status="200") == 3


def test_gthread_with_64_concurrent_clients_counts_exactly(gunicorn):
    g = start(gunicorn, "gthread", workers=2, extra=["--threads", "8"])
    total = 64 * 10
    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(lambda i: request(g.port, "GET", f"/status/{200 + i % 3}")[0],
                                 range(total)))
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == total
    for code in (200, 201, 202):
        assert m.get("gunicorn_worker_requests_total", status=str(code)) == statuses.count(code)


@pytest.mark.parametrize("kind", ["asgi", "uvicorn"])
def test_lifespan_and_websockets_are_not_requests(gunicorn, kind):
    g = start(gunicorn, kind, workers=1)
    with socket.create_connection(("127.0.0.1", g.port)) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert b" 101 " in s.recv(4096)
    assert request(g.port)[0] == 200
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == 1


def test_a_missing_optional_package_names_what_to_install(tmp_path):
    code = ("import sys; sys.modules['gevent'] = None; sys.modules['uvicorn'] = None\n"
            "import gunicorn_prometheus_exporter as g\n"
            "assert g.PrometheusWorker and g.PrometheusThreadWorker\n"
            "for name, package in [('PrometheusGeventWorker', 'gevent'),"
            " ('PrometheusUvicornWorker', 'uvicorn')]:\n"
            "    try:\n"
            "        getattr(g, name)\n"
            "    except ImportError as exc:\n"
            "        assert f'pip install {package}' in str(exc), exc\n"
            "    else:\n"
            "        raise AssertionError(name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_greenlets_in_one_thread_each_keep_their_own_start(gunicorn):
    # A gevent worker runs requests concurrently in one thread: the start of
    # the one in flight moves onto its request when a second begins (the core
    # keeps one start per thread). Each duration must still be its own.
    g = start(gunicorn, "gevent", workers=1)
    slow = request_in_background(g.port, "/sleep/0.4")
    try:
        deadline = time.monotonic() + 10
        while g.scrape().get("gunicorn_worker_requests_in_flight") < 1:
            assert time.monotonic() < deadline, "the slow request never started"
            time.sleep(0.01)
        for _ in range(3):  # begun and answered while the slow one is in flight
            assert request(g.port, "GET", "/sleep/0.01")[0] == 200
    finally:
        slow.wait(timeout=20)
    m = g.scrape_idle()
    duration = "gunicorn_worker_request_duration_seconds"
    assert m.get(f"{duration}_count", status="200") == 4
    assert m.get(f"{duration}_bucket", status="200", le="0.25") == 3  # the slow one is not
    assert m.get(f"{duration}_sum", status="200") >= 0.4 + 3 * 0.01
