"""Gunicorn's USR2 binary upgrade: the new master
takes over the metrics socket and the directory; counters carry on."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from conftest import Samples, request, wait_for

WORKERS = 2


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for a parent that is not us counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def new_master_of(old: int) -> int | None:
    """The child of the old master that has children of its own (workers don't)."""
    for pid in children(old):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gunicorn" in cmdline and children(pid):
            return pid
    return None


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


class ScrapeLoop:
    """Scrapes every ~50 ms on a thread: failures, the longest run of them, and
    every directory-backed counter sample that ever went down."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.failures = 0
        self.longest_failing_run = 0
        self.scrapes = 0
        self.decreases: list[str] = []
        self.start_times: list[float] = []
        self._last: dict[tuple, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ScrapeLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        run = 0
        while not self._stop.is_set():
            try:
                m = scrape(self.port, timeout=5)
            except (OSError, AssertionError):
                self.failures += 1
                run += 1
                self.longest_failing_run = max(self.longest_failing_run, run)
            else:
                run = 0
                self.scrapes += 1
                self._check(m)
            self._stop.wait(0.05)

    def _check(self, m: Samples) -> None:
        for s in m.samples:
            # The process_* and exporter_* series are the serving process's own.
            if not s.name.startswith("gunicorn_") or "_exporter_" in s.name:
                continue
            if not s.name.endswith(("_total", "_bucket", "_count", "_sum")):
                continue
            key = (s.name, tuple(sorted(s.labels.items())))
            if s.value < self._last.get(key, 0.0):
                self.decreases.append(f"{key}: {self._last[key]} -> {s.value}")
            self._last[key] = s.value
        self.start_times.append(m.get("process_start_time_seconds"))


def scrape(port: int, timeout: float = 10) -> Samples:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return Samples(resp.read().decode())
    finally:
        conn.close()


def upgrade(g, processes: set[int]) -> int:
    """USR2 to the master; the new master's pid once its workers are up."""
    processes.update([g.pid, *children(g.pid)])
    os.kill(g.pid, signal.SIGUSR2)
    new = wait_for(lambda: new_master_of(g.pid), 60, "the new master")
    processes.add(new)
    wait_for(lambda: len(children(new)) == WORKERS, 60, "the new master's workers")
    processes.update(children(new))
    # Each new worker has opened its meter (same worker_id slots as the old
    # pool's: their series share labels, so look at the files).
    directory = Path(environ_of(new)["PROMETHEUS_MULTIPROC_DIR"])
    wait_for(lambda: all((directory / f"gauge_livesum_worker{pid}.db").exists()
                         for pid in children(new)), 60, "the new workers' files")
    return new


@pytest.mark.parametrize("configured", [False, True], ids=["private-directory", "configured"])
def test_usr2_then_term_old_master_keeps_counting_on_the_same_port(
        gunicorn, tmp_path, processes, configured):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")} if configured else {}
    if not configured:
        env["PROMETHEUS_MULTIPROC_DIR"] = ""
    g = gunicorn(env=env, workers=WORKERS)
    old = g.pid
    for _ in range(50):
        assert request(g.port)[0] == 200
    old_start = g.scrape().get("process_start_time_seconds")
    with ScrapeLoop(g.metrics_port) as loop:
        new = upgrade(g, processes)
        directory = Path(environ_of(new)["PROMETHEUS_MULTIPROC_DIR"])
        assert directory.is_dir()
        for _ in range(50):
            assert request(g.port)[0] == 200
        os.kill(old, signal.SIGTERM)
        g.proc.wait(60)
        after_exit = loop.scrapes
        wait_for(lambda: loop.scrapes >= after_exit + 3, 30, "scrapes after the old master")
        wait_for(lambda: g.scrape_idle().get("gunicorn_worker_requests_total") == 100, 30,
                 "100 requests counted")
        # The old master's own files are folded once it is gone.
        wait_for(lambda: not list(directory.glob(f"*_master{old}.db")), 30,
                 "the old master's files folded")
        m = g.scrape()
    assert m.get("gunicorn_worker_requests_total") == 100
    assert m.get("gunicorn_master_signals_total", signal="usr2") == 1
    assert m.get("gunicorn_master_signals_total", signal="term") == 1
    assert m.get("gunicorn_workers_desired") == WORKERS
    assert m.get("process_start_time_seconds") != old_start  # served by the new master
    assert loop.decreases == []
    assert loop.scrapes >= 5  # the loop ran through the overlap
    assert loop.longest_failing_run <= 2, (loop.failures, loop.longest_failing_run)
    assert loop.start_times[-1] != old_start
    assert "Address already in use" not in g.output()
    assert "not used" not in g.output()  # the handed-over socket was adopted
    # The new master stops: a private directory goes with it, a configured one stays.
    os.kill(new, signal.SIGTERM)
    wait_for(lambda: gone(new), 60, "the new master to exit")
    assert directory.exists() == configured


def test_usr2_winch_quit_leaves_the_endpoint_served(gunicorn, processes):
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": ""}, workers=WORKERS)
    old = g.pid
    for _ in range(10):
        assert request(g.port)[0] == 200
    new = upgrade(g, processes)
    # A daemonized old master stops its workers on WINCH; in the foreground
    # Gunicorn ignores it. Either way the endpoint stays served.
    os.kill(old, signal.SIGWINCH)
    wait_for(lambda: scrape(g.metrics_port).get("gunicorn_master_signals_total",
                                                signal="winch") == 1, 30, "WINCH counted")
    for _ in range(10):
        assert request(g.port)[0] == 200
    os.kill(old, signal.SIGQUIT)
    g.proc.wait(60)
    m = wait_for(lambda: g.scrape_idle(), 30, "a scrape")
    assert m.get("gunicorn_worker_requests_total") == 20
    assert m.get("gunicorn_workers") == WORKERS
    assert m.get("gunicorn_master_signals_total", signal="quit") == 1
    assert "Address already in use" not in g.output()
    os.kill(new, signal.SIGTERM)
    wait_for(lambda: gone(new), 60, "the new master to exit")


def test_a_second_usr2_upgrade_hands_over_again(gunicorn, processes):
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": ""}, workers=WORKERS)
    first = g.pid
    for _ in range(10):
        assert request(g.port)[0] == 200
    second = upgrade(g, processes)
    directory = Path(environ_of(second)["PROMETHEUS_MULTIPROC_DIR"])
    assert "GUNICORN_PROMETHEUS_FD" in environ_of(second)
    os.kill(first, signal.SIGTERM)
    g.proc.wait(60)
    # Gunicorn ignores USR2 ("Parent exists") until its loop has seen the old
    # master gone and promoted this one.
    wait_for(lambda: "Master has been promoted" in g.output(), 60, "the promotion")
    for _ in range(10):
        assert request(g.port)[0] == 200
    processes.update(children(second))
    os.kill(second, signal.SIGUSR2)
    third = wait_for(lambda: new_master_of(second), 60, "the third master")
    processes.add(third)
    wait_for(lambda: len(children(third)) == WORKERS, 60, "the third master's workers")
    processes.update(children(third))
    assert environ_of(third)["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
    os.kill(second, signal.SIGTERM)
    wait_for(lambda: gone(second), 60, "the second master to exit")
    for _ in range(10):
        assert request(g.port)[0] == 200
    m = wait_for(lambda: g.scrape_idle(), 30, "a scrape")
    assert m.get("gunicorn_worker_requests_total") == 30
    assert m.get("gunicorn_master_signals_total", signal="usr2") == 2
    wait_for(lambda: sorted(p.name for p in directory.glob("*master*.db"))
             == [f"counter_master{third}.db", f"gauge_livesum_master{third}.db"], 30,
             "only the live master's files")
    os.kill(third, signal.SIGTERM)
    wait_for(lambda: gone(third), 60, "the third master to exit")
    assert not directory.exists()
