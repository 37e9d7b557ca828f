"""The gthread worker end to end: real Gunicorn, real HTTP, exact counts.
With test_sync_worker.py, the suite run on every supported Gunicorn and CPython."""

from __future__ import annotations

import http.client
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from conftest import (
    MIX,
    check_a_replacement_takes_the_killed_workers_slot,
    request,
    request_in_background,
    wait_for,
)

THREADS = ["--worker-class", "gunicorn_prometheus_exporter.PrometheusThreadWorker",
           "--threads", "4"]


def test_gthread_exact_counts_per_method_and_status_under_concurrency(gunicorn):
    g = gunicorn(THREADS)
    rounds = 20

    def one(i: int) -> tuple[str, str]:
        method, path, body, want = MIX[i % len(MIX)]
        status, _ = request(g.port, method, path, body)
        assert status == want, (method, path, status)
        return ("other" if method == "PROPFIND" else method), str(status)

    with ThreadPoolExecutor(8) as pool:
        sent = Counter(pool.map(one, range(rounds * len(MIX))))
    m = g.scrape_idle()
    total = rounds * len(MIX)
    assert sum(sent.values()) == total
    for (method, status), n in sent.items():
        assert m.get("gunicorn_worker_requests_total", method=method, status=status) == n
        assert m.get("gunicorn_worker_request_duration_seconds_count",
                     method=method, status=status) == n
    assert m.get("gunicorn_worker_requests_total") == total
    assert m.get("gunicorn_worker_request_duration_seconds_bucket", le="+Inf") == total
    assert m.get("gunicorn_worker_failed_requests_total",
                 method="GET", error_type="AppFailure") == rounds
    assert m.get("gunicorn_worker_request_size_bytes_sum") == rounds * (1500 + 3)
    assert m.get("gunicorn_worker_requests_in_flight") == 0
    worker_ids = {s.labels["worker_id"] for s in m.matching("gunicorn_worker_requests_total")}
    assert worker_ids <= {"1", "2"}


def test_gthread_keepalive_connection_counts_each_request(gunicorn):
    g = gunicorn(THREADS, workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
    try:
        for i in range(15):
            conn.request("GET", f"/status/{200 + i % 2}")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200 + i % 2
            assert not resp.will_close  # one connection for all 15
    finally:
        conn.close()
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total", method="GET", status="200") == 8
    assert m.get("gunicorn_worker_requests_total", method="GET", status="201") == 7
    assert m.get("gunicorn_worker_requests_total") == 15


def test_gthread_unknown_methods_share_one_series(gunicorn):
    g = gunicorn(THREADS, workers=1)
    for i in range(20):
        request(g.port, f"X{i}METHOD", "/")
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total", method="other") == 20
    assert {s.labels["method"] for s in m.matching("gunicorn_worker_requests_total")} == {"other"}


def test_gthread_in_flight_counts_each_thread(gunicorn):
    g = gunicorn(THREADS, workers=1)
    clients = [request_in_background(g.port, "/sleep/1.5") for _ in range(3)]
    try:
        wait_for(lambda: g.scrape().get("gunicorn_worker_requests_in_flight") == 3, 10,
                 "3 requests in flight at once")
    finally:
        for c in clients:
            c.wait(timeout=15)
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total", method="GET", status="200") == 3
    assert m.get("gunicorn_worker_requests_in_flight") == 0


def test_gthread_replacement_worker_takes_the_killed_workers_slot(gunicorn):
    check_a_replacement_takes_the_killed_workers_slot(gunicorn(THREADS, workers=2))
