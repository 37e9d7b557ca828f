"""Running it as a team would: --threads, uvicorn's restarts, the hooks alone,
the 0.2.4 package's configuration, --reload, --reuse-port. Real Gunicorn
masters, real signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import APPS, Gunicorn, Samples, free_port, request, request_in_background

PACKAGE = "gunicorn_prometheus_exporter"
COMPAT = Path(__file__).parent / "apps" / "compat_0_2_4"
DEPLOY = Path(__file__).parent.parent / "deploy"
REASONS = ("max_requests", "timeout", "killed", "crashed", "reload", "scale_down")


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: last {value!r}")


def pythonpath(*dirs: Path) -> str:
    """PYTHONPATH with `dirs` in front of the one the tests run with."""
    inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
    return os.pathsep.join([*map(str, dirs), *inherited])


def total(m: Samples, name: str, **labels: str) -> float:
    """Sum of the matching samples; 0 where there is none."""
    return sum(s.value for s in m.matching(name, **labels))


class Master(Gunicorn):
    """A Gunicorn master started with exactly these arguments: no worker class
    is added, and it runs in `cwd`."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str], app: str,
                 cwd: Path) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {**os.environ, "PROMETHEUS_METRICS_PORT": str(self.metrics_port), **env}
        self.log_path = tmp / f"gunicorn-{self.port}.log"
        self.log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", *args, app]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def restarts(self) -> dict[str, float]:
        m = self.scrape()
        return {r: total(m, "gunicorn_worker_restarts_total", reason=r) for r in REASONS}

    def settle(self, n: int) -> None:
        """Wait until exactly n workers live and are serving metrics."""
        wait_for(lambda: len(self.worker_pids()) == n
                 and total(self.scrape(), "gunicorn_workers") == n, what=f"{n} workers")

    def lines(self, pattern: str) -> list[str]:
        return [ln for ln in self.output().splitlines() if re.search(pattern, ln)]


@pytest.fixture
def master(tmp_path):
    """Start masters: `master(args, env=..., app=..., cwd=..., workers=...)`; all stopped."""
    started: list[Master] = []

    def start(args: list[str], env: dict[str, str] | None = None, app: str = "wsgi_app:app",
              cwd: Path = APPS, workers: int | None = 2, ready: bool = True) -> Master:
        extra = ["--workers", str(workers)] if workers is not None else []
        g = Master(tmp_path, [*extra, *args], env or {}, app, cwd)
        started.append(g)
        if ready:
            g.wait_ready(workers or 1)
        return g

    yield start
    for g in started:
        g.stop()


def concurrency_seen(g: Master, clients: list[subprocess.Popen]) -> float:
    """The most requests in flight at once while the clients run."""
    seen = 0.0
    while any(c.poll() is None for c in clients):
        seen = max(seen, total(g.scrape(), "gunicorn_worker_requests_in_flight"))
        if seen >= 2:
            break
    for c in clients:
        assert c.wait(timeout=30) == 0
    return seen


# --- 2. --threads with PrometheusWorker ---------------------------------------------------


def test_threads_with_prometheus_worker_runs_the_threaded_worker(master):
    g = master(["--worker-class", f"{PACKAGE}.PrometheusWorker", "--threads", "4"], workers=1)
    clients = [request_in_background(g.port, "/sleep/0.3") for _ in range(8)]
    assert concurrency_seen(g, clients) >= 2
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 8


def test_a_subclass_of_prometheus_worker_stays_sync_like_gunicorns_own(tmp_path):
    # Gunicorn swaps only its own class names; so do we.
    code = ("from gunicorn_prometheus_exporter import PrometheusWorker, PrometheusThreadWorker\n"
            "from gunicorn.config import Config\n"
            "import logging\n"
            "class Mine(PrometheusWorker): pass\n"
            "cfg = Config(); cfg.set('threads', 4)\n"
            "args = (1, 1, [], None, 30, cfg, logging.getLogger())\n"
            "print(type(PrometheusWorker(*args)).__name__, type(Mine(*args)).__name__)\n"
            "cfg.set('threads', 1)\n"
            "print(type(PrometheusWorker(*args)).__name__)\n")
    env = {**os.environ, "PROMETHEUS_METRICS_PORT": "0",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["PrometheusThreadWorker", "Mine", "PrometheusWorker"]


# --- 3. uvicorn: every restart has its true reason ----------------------------------------

# Blocks the uvicorn-worker package in the Gunicorn it is given to, so that
# PrometheusUvicornWorker falls back on uvicorn.workers.
BLOCK_UVICORN_WORKER = "import sys\nsys.modules['uvicorn_worker'] = None\n"


@pytest.fixture(params=["uvicorn-worker", "uvicorn.workers"])
def uvicorn_base(request, tmp_path):
    """Environment for a Gunicorn whose PrometheusUvicornWorker is based on
    uvicorn-worker's class, or on uvicorn's deprecated one."""
    if request.param == "uvicorn-worker":
        return request.param, {}
    site = tmp_path / "block-uvicorn-worker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_UVICORN_WORKER)
    return request.param, {"PYTHONPATH": pythonpath(site)}


def test_uvicorn_base_class_and_no_deprecation_error(uvicorn_base):
    base, env = uvicorn_base
    code = (f"import {PACKAGE} as p\n"
            "print(p.PrometheusUvicornWorker.__mro__[3].__module__)\n")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=60)
    assert out.returncode == 0, out.stderr
    want = "uvicorn_worker._workers" if base == "uvicorn-worker" else "uvicorn.workers"
    assert out.stdout.strip() == want


def test_uvicorn_restarts_have_their_true_reasons(master, uvicorn_base):
    _, env = uvicorn_base
    g = master(["--worker-class", f"{PACKAGE}.PrometheusUvicornWorker", "--max-requests", "4",
                "--graceful-timeout", "5"], env=env, app="asgi_app:app", workers=1)
    # uvicorn counts max-requests itself and exits without a signal.
    first = g.worker_pids()
    for _ in range(4):
        assert request(g.port)[0] == 200
    wait_for(lambda: g.restarts()["max_requests"] == 1, what="max_requests restart")
    g.settle(1)
    assert g.worker_pids() != first
    # TTOU: the master TERMs the oldest worker; uvicorn re-raises the TERM.
    os.kill(g.pid, signal.SIGTTIN)
    g.settle(2)
    os.kill(g.pid, signal.SIGTTOU)
    wait_for(lambda: g.restarts()["scale_down"] == 1, what="scale_down restart")
    g.settle(1)
    # HUP: every worker is replaced.
    os.kill(g.pid, signal.SIGHUP)
    wait_for(lambda: g.restarts()["reload"] == 1, what="reload restart")
    g.settle(1)
    assert g.restarts() == {**dict.fromkeys(REASONS, 0.0), "max_requests": 1.0,
                            "scale_down": 1.0, "reload": 1.0}
    assert "Traceback" not in g.output()


# --- --reload (a file change) is `reload` -------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "uvicorn-worker", "uvicorn.workers"])
def test_reload_on_file_change_is_a_reload(master, tmp_path, kind):
    env: dict[str, str] = {}
    if kind == "uvicorn.workers":
        site = tmp_path / "block"
        site.mkdir()
        (site / "sitecustomize.py").write_text(BLOCK_UVICORN_WORKER)
        env["PYTHONPATH"] = pythonpath(site)
    source = "asgi_app" if kind.startswith("uvicorn") else "wsgi_app"
    worker = "PrometheusUvicornWorker" if kind.startswith("uvicorn") else "PrometheusWorker"
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    module = app_dir / f"{source}.py"
    module.write_text((APPS / f"{source}.py").read_text())
    g = master(["--worker-class", f"{PACKAGE}.{worker}", "--reload", "--reload-engine", "poll"],
               env=env, app=f"{source}:app", cwd=app_dir, workers=1)
    assert request(g.port)[0] == 200
    first = g.worker_pids()
    # The reloader notes each file's time on its first pass, which may come
    # after a change: change it again, later, until a reload is seen.
    bumps = iter(range(1, 30))

    def reloaded() -> bool:
        if g.restarts()["reload"] >= 1:
            return True
        later = time.time() + 10 * next(bumps)
        os.utime(module, (later, later))
        time.sleep(1.5)  # longer than the reloader's interval (1 s)
        return False

    wait_for(reloaded, timeout=45, what="reload restart")
    g.settle(1)
    assert g.worker_pids() != first
    assert request(g.port)[0] == 200
    restarts = g.restarts()
    assert restarts["reload"] >= 1
    assert restarts["killed"] == restarts["crashed"] == restarts["max_requests"] == 0


# --- 4. the hooks alone -------------------------------------------------------------------

HOOKS_ALONE = f"from {PACKAGE}.hooks import when_ready, child_exit\n"


@pytest.mark.parametrize("args", [[], ["--threads", "4"], ["--worker-class", "gthread"]],
                         ids=["sync", "threads", "gthread"])
def test_the_hooks_alone_meter_gunicorns_own_workers(master, tmp_path, args):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_ALONE)
    g = master(["--config", str(conf), *args])
    for i in range(20):
        assert request(g.port, "GET", f"/status/{200 + i % 2}")[0] == 200 + i % 2
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == 20
    assert m.get("gunicorn_worker_requests_total", status="201") == 10
    assert m.get("gunicorn_workers") == 2
    # A reload loads Gunicorn's class from the configuration again: still metered.
    os.kill(g.pid, signal.SIGHUP)
    wait_for(lambda: g.restarts()["reload"] == 2, what="reload restarts")
    g.settle(2)
    for _ in range(10):
        assert request(g.port)[0] == 200
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == 30
    assert m.get("gunicorn_workers") == 2
    # The new workers were created while the old ones held "1" and "2" (README).
    live = {s.labels["worker_id"] for s in m.matching("gunicorn_worker_start_time_seconds")}
    assert live == {"3", "4"}
    assert g.lines(f"WARNING.*{PACKAGE}") == []


def test_the_hooks_alone_name_the_class_for_a_worker_they_cannot_meter(master, tmp_path):
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(HOOKS_ALONE)
    # (Gunicorn 27's gevent worker can take its whole graceful timeout to stop.)
    g = master(["--config", str(conf), "--worker-class", "gevent", "--graceful-timeout", "2"],
               ready=False)
    wait_for(lambda: len(g.worker_pids()) == 2, what="2 gevent workers")
    assert request(g.port)[0] == 200
    before = set(g.worker_pids())
    os.kill(g.pid, signal.SIGHUP)  # the class is loaded again; the warning is not repeated
    wait_for(lambda: len(set(g.worker_pids()) - before) == 2 and len(g.worker_pids()) == 2,
             what="2 new workers")
    warnings = g.lines(f"WARNING.*{PACKAGE}")
    assert len(warnings) == 1, warnings
    assert "GeventWorker is not metered" in warnings[0]
    assert f"--worker-class {PACKAGE}.PrometheusGeventWorker" in warnings[0]
    assert total(g.scrape(), "gunicorn_worker_requests_total") == 0


# --- 5. the 0.2.4 package's documented configuration --------------------------------------


def test_the_documented_0_2_4_configuration_runs_unchanged(master, tmp_path):
    # COMPAT holds the gunicorn.conf.py and YAML file of 0.2.4's README
    # ("Option A"), unchanged: the command line's --bind wins over the file's,
    # and the environment wins over the YAML file, as in 0.2.4.
    directory = tmp_path / "multiproc"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PROMETHEUS_BIND_ADDRESS": "127.0.0.1",
           "PYTHONPATH": pythonpath(APPS), "GUNICORN_WORKERS": "2", "REDIS_ENABLED": "true",
           "REDIS_HOST": "redis.invalid"}
    g = master(["--config", "gunicorn.conf.py"], env=env, cwd=COMPAT, workers=None)
    g.wait_ready(2)
    for i in range(25):
        assert request(g.port, "POST" if i % 5 == 0 else "GET", "/")[0] == 200
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == 25
    assert m.get("gunicorn_worker_requests_total", method="POST") == 5
    assert m.get("gunicorn_workers") == 2
    assert any(p.name.endswith(".db") for p in directory.iterdir())
    warnings = g.lines(f"WARNING.*{PACKAGE}")
    assert len(warnings) == 1, warnings
    assert "REDIS_ENABLED" in warnings[0] and "MIGRATION" in warnings[0]
    assert "Traceback" not in g.output()


def test_the_0_2_4_yaml_file_sets_what_the_environment_does_not(tmp_path):
    code = (f"import os\nfrom {PACKAGE} import load_yaml_config\n"
            "load_yaml_config('gunicorn-prometheus-exporter.yml')\n"
            "print(os.environ['PROMETHEUS_METRICS_PORT'], os.environ['PROMETHEUS_BIND_ADDRESS'],"
            " os.environ['PROMETHEUS_MULTIPROC_DIR'], os.environ.get('REDIS_ENABLED'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "REDIS_"))}
    env["PROMETHEUS_BIND_ADDRESS"] = "127.0.0.1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=COMPAT, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["9091", "127.0.0.1", "/tmp/prometheus_multiproc", "None"]


def test_0_2_4_tls_variables_serve_tls_or_stop_gunicorn(tmp_path):
    # Half a TLS configuration stops Gunicorn with one line; it never falls back to plain text.
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{free_port()}",
         "--worker-class", f"{PACKAGE}.PrometheusWorker", "wsgi_app:app"],
        cwd=APPS, env={**os.environ, "PROMETHEUS_METRICS_PORT": str(free_port()),
                       "PROMETHEUS_SSL_CERTFILE": str(tmp_path / "cert.pem")},
        capture_output=True, text=True, timeout=60, start_new_session=True)
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "PROMETHEUS_SSL_KEYFILE" in errors[0], result.stderr


def test_every_0_2_4_hook_name_is_importable():
    from gunicorn_prometheus_exporter import hooks

    for name in ("default_when_ready", "default_on_starting", "default_worker_int",
                 "default_on_exit", "default_post_fork", "default_child_exit",
                 "default_worker_abort", "redis_when_ready", "redis_sidecar_when_ready",
                 "load_yaml_config", "when_ready", "child_exit", "post_fork", "on_exit",
                 "worker_abort"):
        assert callable(getattr(hooks, name)), name


# --- 6. a missing module is named -------------------------------------------------------


def gevent_worker_imports(module: str) -> bool:
    import importlib.util

    source = Path(importlib.util.find_spec("gunicorn.workers.ggevent").origin).read_text()
    return f"import {module}" in source or f"from {module}" in source


@pytest.mark.parametrize("module", ["packaging", "greenlet"])
def test_gevent_names_the_module_that_is_really_missing(module):
    # Gunicorn >= 22's gevent worker imports `packaging` (from 26.2 on only an
    # extra of Gunicorn installs it); gevent itself needs `greenlet`.
    if module == "packaging" and not gevent_worker_imports("packaging"):
        pytest.skip("this Gunicorn's gevent worker does not import packaging")
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"import {PACKAGE} as p\n"
            "try:\n    p.PrometheusGeventWorker\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"pip install {module}" in out.stdout
    assert "pip install gevent" not in out.stdout


def test_uvicorn_names_uvicorn_worker_when_neither_base_is_installed():
    code = ("import sys; sys.modules['uvicorn_worker'] = sys.modules['uvicorn'] = None\n"
            f"import {PACKAGE} as p\n"
            "try:\n    p.PrometheusUvicornWorker\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "needs uvicorn-worker or uvicorn" in out.stdout
    assert "pip install uvicorn-worker" in out.stdout


# --- 7. --reuse-port, deploy files ------------------------------------------------------


def test_reuse_port_still_has_backlog_series(master):
    g = master(["--worker-class", f"{PACKAGE}.PrometheusWorker", "--reuse-port",
                "--backlog", "64"])
    listener = f"http://127.0.0.1:{g.port}"
    m = g.scrape()
    assert m.get("gunicorn_listen_backlog_max", listener=listener) == 64
    assert m.get("gunicorn_listen_backlog", listener=listener) == 0
    assert request(g.port)[0] == 200


def test_deploy_files_name_the_prometheus_configuration_that_scrapes_them():
    for manifest in (DEPLOY / "kubernetes").glob("*.yaml"):
        text = manifest.read_text()
        for path, job in re.findall(r"\((prometheus/[\w.-]+\.yml), job ([\w-]+)\)", text):
            config = DEPLOY / path
            assert config.is_file(), (manifest.name, path)
            assert re.search(rf"job_name: {job}\b", config.read_text()), (manifest.name, job)
