"""Saturation: what each worker can serve at once, and the
connections waiting on every listener (TCP, Unix sockets, --reuse-port)."""

from __future__ import annotations

import socket

import pytest
from conftest import request_in_background, wait_for

PACKAGE = "gunicorn_prometheus_exporter"

# worker class, arguments, application, expected concurrency
CLASSES = {
    "sync": ("PrometheusWorker", ["--threads", "1"], "wsgi_app:app", 1),
    "gthread": ("PrometheusThreadWorker", ["--threads", "4"], "wsgi_app:app", 4),
    "gevent": ("PrometheusGeventWorker", ["--worker-connections", "50"], "wsgi_app:app", 50),
    "uvicorn": ("PrometheusUvicornWorker", ["--worker-connections", "70"], "asgi_app:app", 70),
}


@pytest.mark.parametrize("kind", list(CLASSES))
def test_each_worker_reports_how_many_requests_it_can_serve_at_once(gunicorn, kind):
    worker, args, app, expected = CLASSES[kind]
    g = gunicorn(["--worker-class", f"{PACKAGE}.{worker}", *args], app=app, workers=2)
    m = g.scrape()
    values = {s.labels["worker_id"]: s.value for s in m.matching("gunicorn_worker_concurrency")}
    assert values == {"1": expected, "2": expected}


@pytest.mark.parametrize("kind", ["unix", "tcp-reuse-port"])
def test_connections_waiting_on_a_listener_are_counted(gunicorn, tmp_path, kind):
    # Gunicorn 23 cannot set SO_REUSEPORT on a Unix socket (EOPNOTSUPP): --reuse-port is TCP.
    path = tmp_path / "app.sock"
    if kind == "unix":
        g = gunicorn(["--bind", f"unix:{path}", "--backlog", "64"], workers=1)
        listener = f"unix:{path}"
    else:
        g = gunicorn(["--reuse-port", "--backlog", "64"], workers=1)
        listener = f"http://127.0.0.1:{g.port}"
    m = g.scrape()
    assert m.get("gunicorn_listen_backlog", listener=listener) == 0
    assert m.get("gunicorn_listen_backlog_max", listener=listener) == 64
    busy = request_in_background(g.port, "/sleep/30")
    waiting: list[socket.socket] = []
    try:
        wait_for(lambda: g.scrape().get("gunicorn_worker_requests_in_flight") == 1,
                 what="the only worker busy")
        for _ in range(3):
            if kind == "unix":
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(path))
            else:
                s = socket.create_connection(("127.0.0.1", g.port))
            waiting.append(s)
        assert g.scrape().get("gunicorn_listen_backlog", listener=listener) == 3
    finally:
        for s in waiting:
            s.close()
        busy.kill()
        busy.wait()
