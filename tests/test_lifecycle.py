"""Workers restart, die and scale; counters never go down, files and series stay
bounded, restarts are counted by reason. Real Gunicorn, real signals."""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path

from conftest import Samples, request, request_in_background, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MONOTONIC_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def restarts(g, reason: str) -> float:
    return g.scrape().get("gunicorn_worker_restarts_total", reason=reason)


def settled_workers(g, n: int) -> list[int]:
    """Wait until exactly n workers are live and serving metrics."""
    def ready():
        pids = g.worker_pids()
        live = g.scrape().get("gunicorn_workers")
        return pids if len(pids) == n and live == n else None
    return wait_for(ready, what=f"{n} workers")


def counter_samples(m: Samples) -> dict:
    """Every sample of a counter or histogram, by (name, labels)."""
    out = {}
    for s in m.samples:
        if s.name.endswith(MONOTONIC_SUFFIXES) and not s.name.startswith("process_virtual"):
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_never_decrease_under_churn(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(["--max-requests", "5", "--timeout", "30", "--graceful-timeout", "5"],
                 env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=3)
    deadline = time.monotonic() + 32
    responses = [0] * 4
    stop = threading.Event()
    problems: list[str] = []
    max_workers = [3]

    def load(i: int) -> None:
        # Half the requests take 20 ms, so that a worker lives long enough for
        # a SIGKILL to land mid-life rather than while it exits for max_requests.
        for n in range(200_000):  # bounded in count as well as in time
            if stop.is_set():
                return
            try:
                if request(g.port, "GET", "/sleep/0.02" if n % 2 else "/", timeout=10)[0] == 200:
                    responses[i] += 1
            except (OSError, http.client.HTTPException):
                pass  # the worker serving it was killed: no response, not counted

    def scrape_loop() -> None:
        last: dict = {}
        while not stop.is_set():
            try:
                now = counter_samples(g.scrape())
            except Exception as exc:  # noqa: BLE001 - any failed scrape fails the test
                problems.append(f"scrape failed: {exc!r}")
                return
            for key, value in now.items():
                if value < last.get(key, 0.0):
                    problems.append(f"{key} went from {last[key]} to {value}")
                last[key] = max(value, last.get(key, 0.0))
            time.sleep(0.2)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=scrape_loop))
    for t in threads:
        t.start()
    rng = random.Random(7)
    kills = 0
    try:
        while time.monotonic() < deadline:
            time.sleep(1.5)
            action = rng.choice(["kill", "kill", "hup", "ttin", "ttou"])
            pids = g.worker_pids()
            if action == "kill" and pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass  # it had just exited for max_requests
            elif action == "hup":
                os.kill(g.pid, signal.SIGHUP)
            elif action == "ttin" and len(pids) < 4:
                os.kill(g.pid, signal.SIGTTIN)
                max_workers[0] = max(max_workers[0], len(pids) + 1)
            elif action == "ttou" and len(pids) > 2:
                os.kill(g.pid, signal.SIGTTOU)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not problems, problems[:5]
    assert kills >= 3
    # A random kill may land on a worker already exiting for max_requests (not
    # a kill then): end with kills that surely land mid-request, one per worker.
    # The last signal may still be swapping workers: judge everything at rest.
    live = int(g.scrape_settled(directory).get("gunicorn_workers"))
    sleepers = [request_in_background(g.port, "/sleep/5") for _ in range(live)]
    try:
        wait_for(lambda: g.scrape().get("gunicorn_worker_requests_in_flight") == live,
                 what="every worker in a request")
        for pid in g.worker_pids():
            os.kill(pid, signal.SIGKILL)
            kills += 1
    finally:
        for client in sleepers:
            client.wait(timeout=30)
    m = g.scrape_settled(directory)
    assert m.get("gunicorn_worker_requests_total") == sum(responses)
    assert sum(responses) > 300
    live = int(m.get("gunicorn_workers"))
    files = list(directory.glob("*.db"))
    assert len(files) <= 4 * live + 6, sorted(f.name for f in files)
    worker_ids = {s.labels["worker_id"] for s in m.matching("gunicorn_worker_requests_total")}
    assert len(worker_ids) <= 2 * max_workers[0], worker_ids
    assert live <= m.get("gunicorn_worker_restarts_total", reason="killed") <= kills
    assert m.get("gunicorn_worker_restarts_total", reason="max_requests") >= 10
    assert m.get("gunicorn_worker_restarts_total", reason="timeout") == 0
    assert m.get("gunicorn_worker_restarts_total", reason="crashed") == 0


def test_restart_reasons_are_exact(gunicorn):
    g = gunicorn(["--max-requests", "3"], workers=2)
    settled_workers(g, 2)
    # max_requests: 6 requests over 2 workers end exactly 2 workers' lives at 3 each
    for _ in range(6):
        assert request(g.port)[0] == 200
    wait_for(lambda: restarts(g, "max_requests") == 2, what="max_requests restarts")
    settled_workers(g, 2)
    os.kill(g.worker_pids()[0], signal.SIGKILL)
    wait_for(lambda: restarts(g, "killed") == 1, what="killed restart")
    settled_workers(g, 2)
    os.kill(g.pid, signal.SIGHUP)
    wait_for(lambda: restarts(g, "reload") == 2, what="reload restarts")
    settled_workers(g, 2)
    os.kill(g.pid, signal.SIGTTIN)
    settled_workers(g, 3)
    assert g.scrape().get("gunicorn_workers_desired") == 3
    os.kill(g.pid, signal.SIGTTOU)
    wait_for(lambda: restarts(g, "scale_down") == 1, what="scale_down restart")
    settled_workers(g, 2)
    m = g.scrape()
    assert m.get("gunicorn_workers_desired") == 2
    assert m.get("gunicorn_worker_restarts_total") == 2 + 1 + 2 + 1
    for name in ("hup", "ttin", "ttou"):
        assert m.get("gunicorn_master_signals_total", signal=name) == 1
    assert m.get("gunicorn_master_signals_total", signal="usr1") == 0
    # A reload runs old and new workers side by side: 4 slots at most for 2 workers.
    slots = {s.labels["worker_id"] for s in m.matching("gunicorn_worker_memory_bytes")}
    assert len(slots) == 2 and slots <= {"1", "2", "3", "4"}, slots


def test_a_worker_that_times_out_is_counted_as_timeout(gunicorn):
    g = gunicorn(["--timeout", "2"], workers=1)
    client = request_in_background(g.port, "/sleep/30")
    try:
        wait_for(lambda: restarts(g, "timeout") == 1, timeout=30, what="timeout restart")
    finally:
        client.wait(timeout=30)
    assert restarts(g, "killed") == 0


def test_explicit_hooks_do_not_count_twice(gunicorn, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from gunicorn_prometheus_exporter.hooks import when_ready, child_exit\n")
    g = gunicorn(["--config", str(conf)], workers=2)
    os.kill(g.worker_pids()[0], signal.SIGKILL)
    wait_for(lambda: restarts(g, "killed") == 1, what="killed restart")
    # Both hooks run in the one child_exit call: once it counted, a second count would show.
    assert g.scrape_settled().get("gunicorn_worker_restarts_total", reason="killed") == 1


def app_samples(text: str) -> set:
    return {(s.name, tuple(sorted(s.labels.items())), s.value)
            for s in Samples(text).samples if s.name.startswith("app_")}


def test_application_metrics_match_multiprocess_collector(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                 app="client_metrics_app:app", workers=2)
    for i in range(40):
        request(g.port, "GET", f"/p{i % 3}")

    def collector_text() -> str:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        return generate_latest(registry).decode()

    ours, theirs = app_samples(g.scrape_text()), app_samples(collector_text())
    assert ours == theirs
    assert ("app_hits_total", (("path", "/p0"),), 14.0) in ours
    assert any(name == "app_gauge_all" for name, _, _ in ours)
    # A worker dies: its files are folded, and both readers still agree.
    os.kill(g.worker_pids()[0], signal.SIGKILL)
    wait_for(lambda: restarts(g, "killed") == 1, what="killed restart")
    settled_workers(g, 2)
    for i in range(10):
        request(g.port, "GET", f"/p{i % 3}")
    ours, theirs = app_samples(g.scrape_text()), app_samples(collector_text())
    assert ours == theirs
    hits = sum(v for name, _, v in ours if name == "app_hits_total")
    assert hits == 50
    assert (directory / "counter_archive.db").exists()


def test_corrupt_files_are_skipped_and_counted(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=1)
    for _ in range(5):
        request(g.port)
    assert g.scrape().get("gunicorn_exporter_read_errors_total") == 0
    (directory / "counter_garbage.db").write_bytes(os.urandom(300))
    (directory / "histogram_4242.db").write_bytes((1000).to_bytes(4, "little") + b"\0" * 20)
    bad_key = b'["x", "x", {"a": 1}, "h"]'
    entry = len(bad_key).to_bytes(4, "little") + bad_key + b" " * (8 - (len(bad_key) + 4) % 8)
    body = entry + b"\0" * 16
    (directory / "gauge_livesum_4243.db").write_bytes((8 + len(body)).to_bytes(4, "little")
                                                      + b"\0" * 4 + body)
    (directory / "notes.db").write_bytes(b"")
    m = g.scrape_idle()
    # Four bad files, counted again by every scrape that meets them.
    errors = m.get("gunicorn_exporter_read_errors_total")
    assert errors >= 4 and errors % 4 == 0
    assert m.get("gunicorn_worker_requests_total") == 5
    for _ in range(5):
        assert request(g.port)[0] == 200
    m2 = g.scrape_idle()
    assert m2.get("gunicorn_worker_requests_total") == 10
    assert m2.get("gunicorn_exporter_read_errors_total") >= errors + 4


def test_listen_backlog_shows_connections_waiting_for_a_worker(gunicorn):
    g = gunicorn(workers=1)
    busy = request_in_background(g.port, "/sleep/3")
    waiting = []
    try:
        wait_for(lambda: g.scrape().get("gunicorn_worker_requests_in_flight") == 1, what="busy")
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", g.port))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            waiting.append(s)
        m = g.scrape()
        listener = f"http://127.0.0.1:{g.port}"
        assert m.get("gunicorn_listen_backlog", listener=listener) == 4
        assert m.get("gunicorn_listen_backlog_max", listener=listener) >= 64
    finally:
        busy.wait(timeout=30)
        for s in waiting:
            s.recv(1024)
            s.close()
    wait_for(lambda: g.scrape().get("gunicorn_listen_backlog") == 0, what="empty backlog")


def test_master_process_metrics_are_the_masters(gunicorn):
    g = gunicorn(workers=1)
    m = g.scrape()
    status = Path(f"/proc/{g.pid}/status").read_text()
    rss = float(next(line.split()[1] for line in status.splitlines()
                     if line.startswith("VmRSS:"))) * 1024
    assert abs(m.get("process_resident_memory_bytes") - rss) < 0.2 * rss
    # The scrape itself holds a few descriptors (its socket, the lock, a listing).
    assert abs(m.get("process_open_fds") - len(os.listdir(f"/proc/{g.pid}/fd"))) <= 3
    assert m.get("process_start_time_seconds") <= time.time()
    build = m.matching("gunicorn_exporter_build_info")[0].labels
    assert build["worker_class"] == "gunicorn_prometheus_exporter.PrometheusWorker"


def test_desired_workers_follow_a_reload_that_resets_ttin(gunicorn):
    # HUP reloads the configuration, and with it the number of workers that
    # TTIN had raised: gunicorn_workers_desired must follow.
    g = gunicorn(workers=2)
    os.kill(g.pid, signal.SIGTTIN)
    settled_workers(g, 3)
    assert g.scrape().get("gunicorn_workers_desired") == 3
    os.kill(g.pid, signal.SIGHUP)
    wait_for(lambda: g.scrape().get("gunicorn_workers_desired") == 2, what="desired back to 2")
    m = g.scrape_settled()
    assert m.get("gunicorn_workers") == 2
