"""The metrics server against hostile clients and failures: a wrong-password
flood, a thousand idle sockets, names that are not classic, a killed master's
orphaned workers, and running out of file descriptors."""

from __future__ import annotations

import base64
import http.client
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
from conftest import Samples, failed_start, free_port, request, stop_process, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

PASSWORD = "correct horse"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def auth_config(tmp: Path, cost: int, users: dict[str, str] | None = None) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=cost)).decode()
    users = {"prometheus": hashed, **(users or {})}
    path = tmp / f"web-{cost}.yml"
    path.write_text("basic_auth_users:\n" + "".join(f"  {u}: '{h}'\n" for u, h in users.items()))
    return path


def timed_get(port: int, headers: dict[str, str], timeout: float) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one GET /metrics on a new connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - started
    finally:
        conn.close()



def wait_for_valid_scrape(port: int, headers: dict[str, str]) -> None:
    def ok() -> bool:
        try:
            return timed_get(port, headers, 10)[0] == 200
        except OSError:
            return False
    wait_for(ok, what="the metrics server")


def report(name: str, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    line = (f"{name}: n={len(ms)} p50={statistics.median(ms):.1f} ms "
            f"max={ms[-1]:.1f} ms")
    print(line)
    return line


# A wrong-password client flood in a process of its own (so that its threads
# do not hold this process's GIL while a valid scrape is timed): CONNECTIONS
# keep-alive connections, each sending wrong passwords until STOP_FILE exists
# or SECONDS pass; prints "flooding" once every connection has had an answer,
# then the status counts as JSON.
FLOOD = r"""
import base64, collections, http.client, json, os, sys, threading, time
port, connections, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
stop_file = sys.argv[4]
deadline = time.monotonic() + seconds
statuses = collections.Counter()
answered = threading.Barrier(connections + 1)
lock = threading.Lock()
def flood(n):
    first = True
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while time.monotonic() < deadline and not os.path.exists(stop_file):
        i += 1
        token = base64.b64encode(f"prometheus:wrong-{n}-{i}".encode()).decode()
        try:
            conn.request("GET", "/metrics", headers={"Authorization": "Basic " + token})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status = "error"
        with lock:
            statuses[status] += 1
        if first:
            first = False
            answered.wait()
    if first:
        answered.wait()
threads = [threading.Thread(target=flood, args=(n,)) for n in range(connections)]
for t in threads:
    t.start()
answered.wait()
print("flooding", flush=True)
for t in threads:
    t.join()
print(json.dumps({str(k): v for k, v in statuses.items()}), flush=True)
"""


def test_a_wrong_password_flood_does_not_starve_valid_scrapes(gunicorn, tmp_path):
    # Cost 10: about 60 ms a check here, what a production hash costs at least.
    config = auth_config(tmp_path, 10)
    g = gunicorn(workers=1, env={"PROMETHEUS_WEB_CONFIG_FILE": str(config)}, ready=False)
    valid = basic("prometheus", PASSWORD)
    wait_for_valid_scrape(g.metrics_port, valid)
    # Unknown and known users are both refused (and both pay one bcrypt).
    for headers in (basic("prometheus", "wrong"), basic("nobody", PASSWORD), {}):
        assert timed_get(g.metrics_port, headers, 10)[0] == 401
    stop_file = tmp_path / "stop-flood"
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, str(g.metrics_port), "128", "60", str(stop_file)],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    latencies = []
    try:
        assert flood.stdout.readline().strip() == "flooding"
        for _ in range(20):
            status, body, seconds = timed_get(g.metrics_port, valid, timeout=3)
            assert status == 200 and b"gunicorn_workers " in body
            latencies.append(seconds)
        stop_file.touch()
        statuses = json.loads(flood.communicate(timeout=60)[0].splitlines()[-1])
    finally:
        stop_file.touch()
        stop_process(flood)
    # Every wrong password was refused or told to retry, never let in.
    assert statuses.get("401", 0) > 0, statuses
    assert set(statuses) <= {"401", "503"}, statuses
    report(f"valid scrape during a 128-connection wrong-password flood {statuses}", latencies)


def test_a_hash_too_costly_to_check_stops_startup_naming_the_user(tmp_path):
    cheap = bcrypt.hashpw(b"x", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  ok: '{cheap}'\n  slow: '$2b$31${cheap[7:]}'\n")
    code, errors, stderr = failed_start({"PROMETHEUS_WEB_CONFIG_FILE": str(config),
                                         "PROMETHEUS_METRICS_PORT": str(free_port())})
    assert code != 0
    assert len(errors) == 1, stderr
    assert "PROMETHEUS_WEB_CONFIG_FILE" in errors[0] and '"slow" has cost 31' in errors[0]


@pytest.fixture
def many_descriptors():
    """Room for a thousand sockets in this process, restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_idle_connections_do_not_lock_scrapes_out(gunicorn, tmp_path,
                                                             many_descriptors):
    config = auth_config(tmp_path, 4)
    g = gunicorn(workers=1, env={"PROMETHEUS_WEB_CONFIG_FILE": str(config)}, ready=False)
    valid = basic("prometheus", PASSWORD)
    wait_for_valid_scrape(g.metrics_port, valid)
    idle = []
    try:
        for _ in range(1000):  # connected, and never a byte sent
            idle.append(socket.create_connection(("127.0.0.1", g.metrics_port), timeout=10))
        latencies = []
        for _ in range(20):
            status, body, seconds = timed_get(g.metrics_port, valid, timeout=5)
            assert status == 200 and b"gunicorn_workers" in body
            latencies.append(seconds)
        # The server made room by closing the oldest idle connections.
        closed = 0
        for s in idle[:700]:
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == 700
    finally:
        for s in idle:
            s.close()
    report("valid scrape with 1,000 idle connections", latencies)


DOTTED_APP = '''
from prometheus_client import Counter

REQUESTS = Counter("http.server.requests", "Requests by method.", ["http.request.method"])
PLAIN = Counter("app_plain", "A classic name.", ["path"])


def app(environ, start_response):
    REQUESTS.labels(**{"http.request.method": environ["REQUEST_METHOD"]}).inc()
    PLAIN.labels(path=environ["PATH_INFO"]).inc()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]
'''


def family_lines(text: str, names: tuple[str, ...]) -> list[str]:
    """The lines of a text exposition that belong to the named families."""
    return sorted(line for line in text.splitlines()
                  if line.removeprefix("# HELP ").removeprefix("# TYPE ").startswith(names))


def test_dotted_names_are_written_as_prometheus_client_writes_them(gunicorn, tmp_path):
    (tmp_path / "dotted_app.py").write_text(DOTTED_APP)
    directory = tmp_path / "multiproc"
    g = gunicorn(["--pythonpath", str(tmp_path)], app="dotted_app:app",
                 env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    for i in range(9):
        request(g.port, "POST" if i % 3 == 0 else "GET", f"/p{i % 2}")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    names = ("http_server_requests", "app_plain")

    ours = g.scrape_idle().text
    theirs = generate_latest(registry).decode()
    assert family_lines(ours, names) == family_lines(theirs, names)
    assert 'http_server_requests_total{http_request_method="GET"} 6.0' in ours
    m = Samples(ours)  # prometheus_client's parser reads the whole of it
    assert m.get("http_server_requests_total") == 9
    assert m.get("app_plain_total", path="/p0") == 5
    assert m.get("gunicorn_worker_requests_total") == 9
    assert m.matching("gunicorn_workers")

    ours_om = g.scrape_text(accept=OPENMETRICS)
    theirs_om = generate_openmetrics(registry).decode()
    created = [ln for ln in family_lines(ours_om, names) if "_created" in ln]
    assert len(created) == 4  # one per series: OpenMetrics `_created`
    assert [ln for ln in family_lines(ours_om, names) if "_created" not in ln] == \
        family_lines(theirs_om, names)
    families = {f.name: f for f in parse_om(ours_om)}  # strict
    assert {s.value for s in families["http_server_requests"].samples
            if s.name.endswith("_total")} == {6.0, 3.0}
    assert "gunicorn_worker_requests" in families

    checked = subprocess.run(["promtool", "check", "metrics"], input=ours, capture_output=True,
                             text=True)
    assert "error while linting" not in checked.stderr + checked.stdout, checked.stderr


def sockets_on_port(pid: int, port: int) -> dict[int, str]:
    """fd -> TCP state ("0A" listening, "01" established) of the sockets of
    `pid` whose local port is `port`."""
    states = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states[fields[9]] = fields[3]
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        inode = target.removeprefix("socket:[").removesuffix("]")
        if target.startswith("socket:[") and inode in states:
            found[int(fd)] = states[inode]
    return found


def close_on_exec(pid: int, fd: int) -> bool:
    info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
    flags = int(next(ln for ln in info.splitlines() if ln.startswith("flags:")).split()[1], 8)
    return bool(flags & 0o2000000)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_orphaned_workers_do_not_keep_the_metrics_port(gunicorn):
    # A long timeout: orphaned sync workers notice their parent is gone only
    # after timeout/2 seconds, and this test needs them alive.
    g = gunicorn(["--timeout", "120"], workers=2)
    orphans = g.worker_pids()
    assert len(orphans) == 2
    try:
        held = socket.create_connection(("127.0.0.1", g.metrics_port), timeout=10)
        in_master = wait_for(lambda: (s := sockets_on_port(g.pid, g.metrics_port))
                               and "01" in s.values() and s, what="an accepted connection")
        # The listener and the accepted connection (and any other) are close-on-exec.
        assert {"01", "0A"} <= set(in_master.values())
        assert all(close_on_exec(g.pid, fd) for fd in in_master)
        for pid in orphans:
            assert sockets_on_port(pid, g.metrics_port) == {}
        held.close()

        os.kill(g.pid, signal.SIGKILL)
        g.proc.wait()
        assert all(alive(pid) for pid in orphans)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", g.metrics_port), timeout=5)
        # A new master takes the port while the orphans still live.
        g2 = gunicorn(env={"PROMETHEUS_METRICS_PORT": str(g.metrics_port)}, workers=1,
                      ready=False)
        g2.metrics_port = g.metrics_port
        g2.wait_ready(1)
        assert all(alive(pid) for pid in orphans)
        assert "Address already in use" not in g2.output()
    finally:
        for pid in orphans:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_running_out_of_descriptors_backs_off_and_recovers(tmp_path):
    directory = tmp_path / "multiproc"
    directory.mkdir()
    port = free_port()
    limit = 64

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    exporter = subprocess.Popen(
        ["gunicorn-prometheus-exporter", "--multiproc-dir", str(directory), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True,
        preexec_fn=low_limit)
    flood = []
    try:
        assert f"127.0.0.1:{port}" in exporter.stdout.readline()
        assert request(port, "GET", "/metrics")[0] == 200
        for _ in range(300):  # more than the exporter may hold
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            flood.append(s)
        wait_for(lambda: len(os.listdir(f"/proc/{exporter.pid}/fd")) >= limit - 1,
                   what="the exporter out of descriptors")
        before, started = cpu_seconds(exporter.pid), time.monotonic()
        time.sleep(2.0)  # a window to measure CPU time over, not a wait for a state
        used, window = cpu_seconds(exporter.pid) - before, time.monotonic() - started
        print(f"exporter CPU while out of descriptors: {used:.2f} s in {window:.2f} s")
        assert used < 0.25 * window, f"{used:.2f} s of CPU in {window:.2f} s: a busy loop"
        for s in flood:
            s.close()

        def scraped() -> bool:
            try:
                status, body = request(port, "GET", "/metrics", timeout=5)
            except OSError:
                return False
            return status == 200 and b"process_open_fds" in body
        wait_for(scraped, what="a scrape after the flood")
    finally:
        for s in flood:
            s.close()
        stop_process(exporter)
    assert exporter.returncode == 0
    assert exporter.stdout.read().count("cannot accept connections") >= 1


def test_the_gunicorn_listener_stays_in_workers(gunicorn):
    # Closing the inherited metrics sockets must not touch the application's.
    g = gunicorn(workers=2)
    for pid in g.worker_pids():
        assert set(sockets_on_port(pid, g.port).values()) == {"0A"}
    for _ in range(4):
        assert request(g.port)[0] == 200

