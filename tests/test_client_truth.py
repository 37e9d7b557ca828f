"""Counts are what the client saw: the status Gunicorn wrote on the wire, every
exception the application raised (also where its framework answered for it),
nothing written by a process forked inside a request, a live pool after a
USR2 whose other master was SIGKILLed, and requests counted whatever the
application does to Gunicorn's access logger."""

from __future__ import annotations

import os
import signal
import socket

import pytest
from conftest import request, wait_for
from test_upgrade import children, gone, upgrade

PACKAGE = "gunicorn_prometheus_exporter"
WORKERS = {"sync": [], "gthread": ["--threads", "4"]}


def statuses(m) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in m.matching("gunicorn_worker_requests_total"):
        out[s.labels["status"]] = out.get(s.labels["status"], 0) + s.value
    return out


def failures(m) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in m.matching("gunicorn_worker_failed_requests_total"):
        out[s.labels["error_type"]] = out.get(s.labels["error_type"], 0) + s.value
    return out


def status_sent(port: int, path: str) -> str:
    """The status label of what Gunicorn wrote: the code of its status line,
    `other` when that is not a three-digit code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        line = conn.makefile("rb").readline().decode("latin-1")
    code = line.split(" ", 2)[1].strip() if line.count(" ") else ""
    return code if len(code) == 3 and code.isdigit() else "other"


def counted(g, total: int):
    return wait_for(lambda: (m := g.scrape_idle()).get_or("gunicorn_worker_requests_total", 0)
                    == total and m, what=f"{total} requests counted")


@pytest.mark.parametrize("worker", list(WORKERS))
@pytest.mark.parametrize("path", ["/body-raises", "/clears-environ", "/no-start-response"])
def test_the_status_counted_is_the_one_gunicorn_sent(gunicorn, worker, path):
    g = gunicorn(WORKERS[worker], app="edge_app:app", workers=1)
    seen: dict[str, float] = {}
    for _ in range(5):
        status = status_sent(g.port, path)
        seen[status] = seen.get(status, 0) + 1
    for _ in range(3):
        assert request(g.port)[0] == 200
    seen["200"] = seen.get("200", 0) + 3
    m = counted(g, 8)
    assert statuses(m) == seen
    # Gunicorn answers each with its error page, or (no status at all) with
    # the status line "HTTP/1.1 None".
    assert seen.get("other" if path == "/no-start-response" else "500") == 5


@pytest.mark.parametrize("worker", list(WORKERS))
def test_a_body_that_raises_is_one_failure_of_its_class(gunicorn, worker):
    g = gunicorn(WORKERS[worker], app="edge_app:app", workers=1)
    for _ in range(4):
        assert request(g.port, "GET", "/body-raises")[0] == 500
    m = counted(g, 4)
    assert failures(m) == {"BodyFailure": 4}


# app, worker class, status of /fail, whether the worker also sees the exception
FRAMEWORKS = {
    "flask": ("flask_app:app", "PrometheusWorker"),
    "flask-propagating": ("flask_app:propagating", "PrometheusThreadWorker"),
    "django": ("django_app:app", "PrometheusWorker"),
    "django-gthread": ("django_app:app", "PrometheusThreadWorker"),
    "fastapi": ("fastapi_app:app", "PrometheusUvicornWorker"),
}


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_an_exception_the_framework_answered_is_counted_once(gunicorn, framework):
    app, worker = FRAMEWORKS[framework]
    g = gunicorn(["--worker-class", f"{PACKAGE}.{worker}"], app=app, workers=1)
    for _ in range(4):
        assert request(g.port, "GET", "/fail")[0] == 500
    assert request(g.port, "GET", "/")[0] == 200
    m = counted(g, 5)
    assert failures(m) == {"ZeroDivisionError": 4}
    assert statuses(m) == {"500": 4, "200": 1}
    assert m.get("gunicorn_worker_failed_requests_total", method="GET") == 4


@pytest.mark.parametrize("how", ["exit", "raise"])
def test_a_process_forked_in_a_request_writes_nothing_of_the_worker(gunicorn, tmp_path, how):
    directory = tmp_path / "metrics"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, app="edge_app:app",
                 workers=1)
    for _ in range(10):
        assert request(g.port, "GET", f"/fork/{how}")[0] == 200
    m = counted(g, 10)
    assert statuses(m) == {"200": 10}
    assert m.get("gunicorn_worker_requests_in_flight") == 0
    assert failures(m) == {}
    # No exit note of the worker was left by a child: killed, it is "killed".
    (worker,) = g.worker_pids()
    assert not (directory / f"exit_{worker}.note").exists()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: g.scrape_settled(directory).get_or(
        "gunicorn_worker_restarts_total", 0, reason="killed") == 1, 30, "the restart counted")
    m = g.scrape_settled(directory)
    assert m.get("gunicorn_worker_restarts_total") == 1
    assert m.get("gunicorn_worker_requests_total") == 10


@pytest.mark.parametrize("killed", ["old", "new"])
def test_after_usr2_the_surviving_master_folds_the_dead_masters_workers(
        gunicorn, tmp_path, processes, killed):
    directory = tmp_path / "metrics"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=2)
    for _ in range(10):
        assert request(g.port)[0] == 200
    old = g.pid
    new = upgrade(g, processes)
    for _ in range(10):
        assert request(g.port)[0] == 200
    victim, survivor = (old, new) if killed == "old" else (new, old)
    orphans = [pid for pid in children(victim) if pid != survivor]
    os.kill(victim, signal.SIGKILL)
    # The dead master's workers notice and leave; nobody reaps them for it.
    wait_for(lambda: all(gone(pid) for pid in orphans), 60, "the dead master's workers to exit")

    def live_pool():
        m = g.scrape_idle()
        files = {p.name for p in directory.glob("gauge_livesum_worker*.db")}
        live = {f"gauge_livesum_worker{pid}.db" for pid in children(survivor)}
        return (m.get("gunicorn_workers") == 2 and files == live
                and len(m.matching("gunicorn_worker_uptime_seconds")) == 2 and m)

    m = wait_for(live_pool, 30, "the dead master's workers folded")
    assert m.get("gunicorn_worker_requests_total") == 20
    # The survivor's pool still counts, and a HUP changes nothing of it.
    os.kill(survivor, signal.SIGHUP)
    for _ in range(5):
        assert request(g.port)[0] == 200
    m = wait_for(live_pool, 60, "the pool after HUP")
    assert wait_for(lambda: g.scrape_idle().get("gunicorn_worker_requests_total") == 25, 30,
                    "25 requests counted")


HOOK_REPLACING_ACCESS = """
def post_worker_init(worker):
    # An application replacing Gunicorn's access logger once the worker runs.
    worker.log.access = lambda resp, req, environ, request_time: None
"""

HOOK_REPLACING_LOGGER = """
def post_worker_init(worker):
    from gunicorn.glogging import Logger

    worker.log = Logger(worker.cfg)
"""


@pytest.mark.parametrize("worker", list(WORKERS))
@pytest.mark.parametrize("hook", [HOOK_REPLACING_ACCESS, HOOK_REPLACING_LOGGER],
                         ids=["access", "logger"])
def test_requests_are_counted_when_the_access_logger_is_replaced(gunicorn, tmp_path, worker,
                                                                  hook):
    config = tmp_path / "replacing.conf.py"
    config.write_text(hook)
    g = gunicorn([*WORKERS[worker], "--config", str(config)], workers=1)
    for _ in range(6):
        assert request(g.port, "GET", "/status/201")[0] == 201
    m = counted(g, 6)
    # The first request after the replacement is where the worker finds out:
    # Gunicorn logged it elsewhere, so it is counted without its status.
    assert statuses(m) == {"201": 5, "other": 1}
    warnings = [ln for ln in g.output().splitlines() if "access" in ln and "WARNING" in ln]
    assert len(warnings) == 1, g.output()

