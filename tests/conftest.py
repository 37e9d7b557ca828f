"""Real Gunicorn masters for the tests, always cleaned up."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

APPS = Path(__file__).parent / "apps"
WORKER = "gunicorn_prometheus_exporter.PrometheusWorker"

# Requests of every kind the exact-count tests send: (method, path, body, status)
MIX = [
    ("GET", "/", None, 200),
    ("POST", "/echo", b"x" * 1500, 200),
    ("GET", "/status/404", None, 404),
    ("PUT", "/status/201", b"abc", 201),
    ("GET", "/raise", None, 500),
    ("PROPFIND", "/", None, 200),
    ("DELETE", "/status/204", None, 204),
    ("HEAD", "/", None, 200),
]


def send_mix(port: int, rounds: int) -> Counter:
    """Send MIX `rounds` times, checking each status: (method label, status) -> sent."""
    sent: Counter = Counter()
    for _ in range(rounds):
        for method, path, body, want in MIX:
            status, _ = request(port, method, path, body)
            assert status == want, (method, path, status)
            sent[(method if method != "PROPFIND" else "other", str(status))] += 1
    return sent


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll until `predicate()` is truthy and return its value; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last {value!r}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str = "GET", path: str = "/", body: bytes | None = None,
            timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def request_in_background(port: int, path: str) -> subprocess.Popen:
    """A client in another process, e.g. to keep a worker busy; wait() on it."""
    code = ("import http.client as h, sys; c = h.HTTPConnection('127.0.0.1', int(sys.argv[1]));"
            "c.request('GET', sys.argv[2]); c.getresponse().read()")
    return subprocess.Popen([sys.executable, "-c", code, str(port), path])


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM a process this test started, then SIGKILL its whole group (it was
    started in a session of its own) if anything is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def env_without_rust() -> dict[str, str]:
    """os.environ less every PATH entry that holds cargo or rustc, Rust's variables,
    and whatever could point Python at the source tree or another venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CARGO", "RUSTUP", "RUSTC", "RUSTFLAGS", "MATURIN"))
           and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep)
        if d and not any(os.access(os.path.join(d, tool), os.X_OK) for tool in ("cargo", "rustc")))
    return env


def private_directories(tmp: Path) -> list[str]:
    """The private directories masters made under `tmp` (their TMPDIR)."""
    return sorted(p.name for p in tmp.glob("gunicorn-prometheus-*"))


def failed_start(env: dict[str, str]) -> tuple[int, list[str], str]:
    """Start Gunicorn with the exporter and settings that must stop it:
    (exit code, its `Error:` lines, all it wrote to stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{free_port()}",
         "--worker-class", WORKER, "wsgi_app:app"],
        cwd=APPS, env={**os.environ, **env}, capture_output=True, timeout=60,
        start_new_session=True)
    stderr = result.stderr.decode()
    return result.returncode, [ln for ln in stderr.splitlines() if ln.startswith("Error:")], stderr


class Samples:
    """A parsed scrape: sum of sample values matching a name and some labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def get(self, name: str, **labels: str) -> float:
        """The sum of the matching samples; raises if there is none, so that a
        series that disappeared cannot pass an `== 0` assertion."""
        found = self.matching(name, **labels)
        if not found:
            raise AssertionError(f"no sample {name}{labels or ''} in the scrape")
        return sum(s.value for s in found)

    def get_or(self, name: str, default: float, **labels: str) -> float:
        """As `get`, for a series whose absence legitimately means `default`
        (a label value nothing recorded yet)."""
        found = self.matching(name, **labels)
        return sum(s.value for s in found) if found else default

    def matching(self, name: str, **labels: str) -> list:
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


class Gunicorn:
    """One Gunicorn master started by a test, in its own process group."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str], app: str,
                 python: list[str] | None = None) -> None:
        """`python`: the command that runs the interpreter, this test's by default."""
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {**os.environ, "PROMETHEUS_METRICS_PORT": str(self.metrics_port), **env}
        self.log_path = tmp / f"gunicorn-{self.port}.log"
        self.log = open(self.log_path, "wb")
        cmd = [*(python or [sys.executable]), "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
               "--worker-class", WORKER, *args, app]
        self.proc = subprocess.Popen(cmd, cwd=APPS, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, workers: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited early:\n{self.output()}")
            try:
                started = self.scrape().matching("gunicorn_worker_start_time_seconds")
                if len(started) >= workers and len(self.worker_pids()) >= workers:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gunicorn not ready:\n{self.output()}")

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def scrape_response(self, accept: str | None = None) -> tuple[str, bytes]:
        """(Content-Type, body) of a scrape that must succeed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            return resp.getheader("Content-Type"), resp.read()
        finally:
            conn.close()

    def scrape_text(self, accept: str | None = None) -> str:
        return self.scrape_response(accept)[1].decode()

    def scrape(self) -> Samples:
        return Samples(self.scrape_text())

    def scrape_idle(self, timeout: float = 10.0) -> Samples:
        """A scrape once no request is in flight. Gunicorn logs (and so counts)
        a request just after its response is sent: a client can see the
        response a moment before the count."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.scrape()
            if m.get("gunicorn_worker_requests_in_flight") == 0:
                # Read again: a scrape reads the files one after another, so
                # the one that saw no request in flight may have read a
                # counter before the last request was counted (it counts,
                # then leaves). This one starts after that request left.
                return self.scrape()
            if time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    def scrape_settled(self, directory: Path | None = None, timeout: float = 30.0) -> Samples:
        """A scrape once the pool is at rest: as many live workers as desired,
        each serving metrics, no request in flight and, with `directory`, no
        file left of a worker that exited (every exit reaped and retired)."""
        why = ["never scraped"]

        def settled() -> Samples | None:
            pids = self.worker_pids()
            m = self.scrape()
            desired = m.get("gunicorn_workers_desired")
            serving = len(m.matching("gunicorn_worker_start_time_seconds"))
            in_flight = m.get_or("gunicorn_worker_requests_in_flight", 0)
            if not (len(pids) == desired == m.get("gunicorn_workers") == serving
                    and in_flight == 0):
                why[0] = (f"pids {pids}, desired {desired}, gunicorn_workers "
                          f"{m.get('gunicorn_workers')}, serving {serving}, in flight {in_flight}")
                return None
            if directory is not None:
                live = {str(pid) for pid in pids}
                left = [f.name for f in directory.glob("*_worker*.db")
                        if f.stem.rsplit("_worker", 1)[1] not in live]
                if left:
                    why[0] = f"files of exited workers: {sorted(left)}"
                    return None
            return m

        try:
            return wait_for(settled, timeout, "the worker pool to settle")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {why[0]}") from None

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        stop_process(self.proc)
        self.log.close()
        return self.proc.returncode


def check_a_replacement_takes_the_killed_workers_slot(g: Gunicorn) -> None:
    """Ten requests, SIGKILL one of two workers, ten more: the replacement
    counts on, under the dead worker's worker_id."""
    for _ in range(10):
        request(g.port)
    before = g.scrape_idle().get("gunicorn_worker_requests_total")
    assert before == 10
    victim = g.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in (pids := g.worker_pids()) and len(pids) == 2, 20,
             "the killed worker's replacement")
    g.wait_ready(2)
    for _ in range(10):
        request(g.port)
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == before + 10
    assert {s.labels["worker_id"] for s in m.matching("gunicorn_worker_memory_bytes")} == {"1", "2"}


@pytest.fixture
def gunicorn(tmp_path):
    """Start Gunicorn masters: `gunicorn(args, env=..., app=...)`; all stopped at the end."""
    started: list[Gunicorn] = []

    def start(args: list[str] | None = None, env: dict[str, str] | None = None,
              app: str = "wsgi_app:app", workers: int = 2, ready: bool = True,
              python: list[str] | None = None) -> Gunicorn:
        g = Gunicorn(tmp_path, ["--workers", str(workers), *(args or [])], env or {}, app,
                     python)
        started.append(g)
        if ready:
            g.wait_ready(workers)
        return g

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def processes():
    """Pids a test came to know (both masters, every worker): killed at the end."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Prometheus:
    """A real Prometheus server (Debian's `prometheus`) on 127.0.0.1."""

    def __init__(self, tmp: Path, config: str, flags: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        config_file = tmp / f"prometheus-{self.port}.yml"
        config_file.write_text(config)
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config_file}",
             f"--storage.tsdb.path={tmp / f'tsdb-{self.port}'}",
             f"--web.listen-address=127.0.0.1:{self.port}", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)

    def query(self, query: str) -> list:
        """The result of an instant query; raises on a query that does not parse."""
        body = self.api("query", query=query)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "data"):
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
                if value:
                    return value
            except OSError:
                pass
            assert time.monotonic() < deadline, f"Prometheus: timed out waiting for {what}"
            time.sleep(0.5)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def prometheus(tmp_path):
    """Start real Prometheus servers: `prometheus(config_text)`; all stopped at the end."""
    started: list[Prometheus] = []

    def start(config: str, flags: tuple[str, ...] = ()) -> Prometheus:
        """`flags`: more command-line flags, e.g. `--enable-feature=native-histograms`."""
        p = Prometheus(tmp_path, config, flags)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
