"""The sync worker end to end: real Gunicorn, real HTTP, exact counts."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    MIX,
    check_a_replacement_takes_the_killed_workers_slot,
    failed_start,
    private_directories,
    request,
    request_in_background,
    send_mix,
    wait_for,
)
from prometheus_client.mmap_dict import MmapedDict


def test_exact_counts_per_method_and_status(gunicorn):
    g = gunicorn()
    rounds = 25
    sent = send_mix(g.port, rounds)
    m = g.scrape_idle()
    total = sum(sent.values())
    assert total == rounds * len(MIX)
    for (method, status), n in sent.items():
        assert m.get("gunicorn_worker_requests_total", method=method, status=status) == n
        assert m.get("gunicorn_worker_request_duration_seconds_count",
                     method=method, status=status) == n
    assert m.get("gunicorn_worker_requests_total") == total
    assert m.get("gunicorn_worker_request_duration_seconds_count") == total
    assert m.get("gunicorn_worker_request_duration_seconds_bucket", le="+Inf") == total
    assert m.get("gunicorn_worker_failed_requests_total",
                 method="GET", error_type="AppFailure") == rounds
    assert m.get("gunicorn_worker_failed_requests_total") == rounds
    assert m.get("gunicorn_worker_request_size_bytes_sum") == rounds * (1500 + 3)
    assert m.get("gunicorn_worker_request_size_bytes_count") == total
    assert m.get("gunicorn_worker_requests_in_flight") == 0
    worker_ids = {s.labels["worker_id"] for s in m.matching("gunicorn_worker_requests_total")}
    assert worker_ids <= {"1", "2"}


def test_the_applications_exception_reaches_gunicorn_as_raised(gunicorn):
    # The core's handler counts the exception, then lets Gunicorn see the
    # very exception the application raised (its error log shows it).
    g = gunicorn(workers=1)
    assert request(g.port, "GET", "/raise")[0] == 500
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_failed_requests_total", error_type="AppFailure") == 1
    out = wait_for(lambda: "AppFailure: the application failed" in g.output() and g.output(),
                   what="the application's exception in Gunicorn's log")
    assert "SystemError" not in out


@pytest.mark.parametrize("logger_class", [None, "wsgi_app.ReadOnlyAccessLogger"])
def test_every_response_is_counted_and_still_logged(gunicorn, tmp_path, logger_class):
    # The core sets the logger's `access` attribute; a logger whose `access`
    # cannot be set (a read-only property) is wrapped instead. Either way each
    # response is counted once and logged once, by the logger's own access.
    access_log = tmp_path / "access.log"
    args = ["--access-logfile", str(access_log)]
    if logger_class:
        args += ["--logger-class", logger_class]
    g = gunicorn(args)
    sent = send_mix(g.port, 5)
    m = g.scrape_idle()
    for (method, status), n in sent.items():
        assert m.get("gunicorn_worker_requests_total", method=method, status=status) == n
    assert m.get("gunicorn_worker_requests_total") == 5 * len(MIX)
    lines = wait_for(lambda: (t := access_log.read_text().splitlines()) and
                     len(t) >= 5 * len(MIX) and t, what="the access log lines")
    assert len(lines) == 5 * len(MIX)
    assert sum(' "DELETE /status/204 ' in line for line in lines) == 5


def test_unknown_methods_share_one_series(gunicorn):
    g = gunicorn(workers=1)
    for i in range(20):
        request(g.port, f"X{i}METHOD", "/")
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total", method="other") == 20
    assert {s.labels["method"] for s in m.matching("gunicorn_worker_requests_total")} == {"other"}


def test_memory_gauge_is_each_workers_own_rss(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    # A resource sample taken after start-up settled (the sampler runs every second).
    def sampled_after_start():
        m = g.scrape()
        uptimes = [s.value for s in m.matching("gunicorn_worker_uptime_seconds")]
        return m if len(uptimes) == 2 and min(uptimes) >= 1.5 else None

    wait_for(sampled_after_start, what="a resource sample 1.5 s after start")
    master_rss = rss_bytes(g.pid)
    workers = g.worker_pids()
    assert len(workers) == 2

    def memory_in_file(pid: int) -> tuple[str, float]:
        path = directory / f"gauge_livesum_worker{pid}.db"
        entries = MmapedDict.read_all_values_from_file(str(path))
        key, value = next((k, v) for k, v, _, _ in entries if '"gunicorn_worker_memory_bytes"' in k)
        return key.split('"worker_id": "')[1].split('"')[0], value

    seen = set()
    for pid in workers:
        # The sampler rewrites the gauge every second: compare the scrape with
        # the file only when the file held one value across it.
        for _ in range(10):
            worker_id, before = memory_in_file(pid)
            served = g.scrape().get("gunicorn_worker_memory_bytes", worker_id=worker_id)
            if memory_in_file(pid)[1] == before:
                break
        else:
            raise AssertionError("the sampler rewrote the gauge during each of 10 scrapes")
        seen.add(worker_id)
        assert served == before
        assert abs(served - rss_bytes(pid)) <= 0.1 * rss_bytes(pid), (served, rss_bytes(pid))
        assert served != master_rss
    assert seen == {"1", "2"}


def rss_bytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_promtool_accepts_a_real_scrape(gunicorn):
    g = gunicorn()
    send_mix(g.port, 3)
    text = g.scrape_text()
    assert "gunicorn_worker_requests_total" in text
    result = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                            capture_output=True)
    assert result.returncode == 0, result
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


def test_busy_seconds_grow_by_the_time_spent_in_requests(gunicorn):
    g = gunicorn(workers=1)
    before = g.scrape().get("gunicorn_worker_busy_seconds_total")
    started = time.monotonic()
    for _ in range(3):
        assert request(g.port, "GET", "/sleep/0.2")[0] == 200
    wall = time.monotonic() - started
    after = g.scrape_idle().get("gunicorn_worker_busy_seconds_total")
    assert 0.6 <= after - before <= wall


def test_busy_seconds_grow_during_a_long_request(gunicorn):
    g = gunicorn(workers=1)
    client = request_in_background(g.port, "/sleep/2")
    try:
        first = wait_for(lambda: (m := g.scrape()).get("gunicorn_worker_requests_in_flight") == 1
                         and m, what="the request in flight")
        # Still in flight: the busy time grew while the request ran.
        wait_for(lambda: (m := g.scrape()).get("gunicorn_worker_requests_in_flight") == 1
                 and m.get("gunicorn_worker_busy_seconds_total")
                 > first.get("gunicorn_worker_busy_seconds_total") + 0.3,
                 1.5, "busy time to grow during the request")
    finally:
        client.wait(timeout=10)


def test_metrics_are_served_while_every_worker_is_busy(gunicorn):
    g = gunicorn(workers=2)
    clients = [request_in_background(g.port, "/sleep/4") for _ in range(2)]
    try:
        # Scrapes answer, and see both requests in flight, while no worker is free.
        wait_for(lambda: g.scrape().get("gunicorn_worker_requests_in_flight") == 2,
                 what="both workers busy")
    finally:
        for c in clients:
            c.wait(timeout=15)


def test_replacement_worker_takes_the_killed_workers_slot(gunicorn):
    check_a_replacement_takes_the_killed_workers_slot(gunicorn(workers=2))


def test_zero_config_makes_a_private_directory_and_removes_it(gunicorn):
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    g = gunicorn(env=env)
    maps = Path(f"/proc/{g.worker_pids()[0]}/maps").read_text().split()
    directory = Path(next(p for p in maps if p.endswith(".db"))).parent
    assert directory.is_dir()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert list(directory.glob("counter_*.db"))
    assert g.stop() == 0
    assert not directory.exists()


@pytest.mark.parametrize("args", [[], ["--threads", "4"]], ids=["sync", "threads"])
def test_preload_serves_the_applications_own_metrics_with_the_private_directory(
        gunicorn, tmp_path, monkeypatch, args):
    # Gunicorn calls the worker class's setup before --preload imports the
    # application: the directory is exported by then.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    g = gunicorn(["--preload", *args], env={"TMPDIR": str(tmp)}, app="preload_app:app")
    for _ in range(7):
        assert request(g.port)[0] == 200
    m = g.scrape_idle()
    assert m.get("app_orders_total") == 7
    # Imported once, by the master, whose own file was kept.
    assert m.get("app_imported_by_pid") == g.pid
    assert len(private_directories(tmp)) == 1
    assert "prometheus_client was imported before" not in g.output()
    assert g.stop() == 0
    assert private_directories(tmp) == []  # removed with the master


def test_files_of_an_earlier_run_are_cleared_at_start(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    shutil.copy(Path(__file__), directory / "unrelated.txt")
    (directory / "counter_999999.db").write_bytes(b"\x10\x00\x00\x00" + b"\x00" * 60)
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert not (directory / "counter_999999.db").exists()
    assert (directory / "unrelated.txt").exists()
    assert g.scrape().get("gunicorn_exporter_read_errors_total") == 0


def test_hooks_and_zero_config_together_start_one_server(gunicorn, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from gunicorn_prometheus_exporter.hooks import when_ready, child_exit\n")
    g = gunicorn(["--config", str(conf)])
    request(g.port)
    assert g.scrape_idle().get("gunicorn_worker_requests_total") >= 1
    assert g.output().count("Traceback") == 0


@pytest.mark.parametrize("variable,value", [
    ("PROMETHEUS_METRICS_PORT", "not-a-port"),
    ("PROMETHEUS_METRICS_PORT", "99999"),
    ("PROMETHEUS_DURATION_BUCKETS", "1,0.5"),
    ("PROMETHEUS_BIND_ADDRESS", "nowhere"),
    ("PROMETHEUS_METRICS_PREFIX", "bad-prefix"),
])
def test_bad_setting_stops_startup_with_one_line_naming_it(variable, value):
    code, errors, stderr = failed_start({variable: value})
    assert code != 0
    assert len(errors) == 1 and variable in errors[0], stderr
    assert "Traceback" not in stderr


def test_taken_metrics_port_stops_startup():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, errors, stderr = failed_start({"PROMETHEUS_METRICS_PORT": port})
    assert code != 0
    assert len(errors) == 1 and "PROMETHEUS_METRICS_PORT" in errors[0], stderr


def test_master_logs_the_metrics_url_once(gunicorn):
    g = gunicorn(workers=2)
    lines = [ln for ln in g.output().splitlines() if "serving metrics at" in ln]
    assert len(lines) == 1, lines  # by the master, not by each worker
    assert lines[0].endswith(f"[{g.pid}] [INFO] gunicorn_prometheus_exporter: serving metrics "
                             f"at http://127.0.0.1:{g.metrics_port}/metrics"), lines


def test_index_page_404_and_405(gunicorn):
    g = gunicorn(workers=1)
    status, body = request(g.metrics_port, "GET", "/")
    assert status == 200 and b'href="metrics"' in body
    assert request(g.metrics_port, "GET", "/nope")[0] == 404
    assert request(g.metrics_port, "POST", "/metrics", b"x")[0] == 405
