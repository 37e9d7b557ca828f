"""The wheel as users get it: installed into clean venvs of the oldest and the
newest supported CPython, with no Rust toolchain reachable, Gunicorn runs the
worker classes and counts every request exactly.

tests/run.sh builds the manylinux2014 x86_64 wheel once and passes its path in
GPE_WHEEL. The venvs (CPython from pyenv + the newest Gunicorn it supports) are
kept under target/venvs; the wheel is reinstalled into them on every run."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import APPS, Samples, env_without_rust, free_port, request, stop_process

WHEEL = os.environ.get("GPE_WHEEL")
pytestmark = pytest.mark.skipif(
    not WHEEL, reason="GPE_WHEEL is unset (tests/run.sh sets it to the wheel it builds)")

VENVS = Path(__file__).resolve().parent.parent / "target" / "venvs"
# CPython -> the newest Gunicorn that supports it
GUNICORN_FOR = {"3.9": "23.0.0", "3.13": "27.0.1"}
MIX = [("GET", "/", 200), ("GET", "/status/404", 404), ("POST", "/status/201", 201),
       ("GET", "/raise", 500), ("DELETE", "/status/204", 204)]


def find_python(version: str) -> Path | None:
    """CPython X.Y: pyenv's newest X.Y.*, else pythonX.Y on PATH (CI's setup-python)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = [p for p in root.glob(f"{version}.*/bin/python")
             if re.fullmatch(rf"{re.escape(version)}\.\d+", p.parent.parent.name)]
    if found:
        return max(found, key=lambda p: int(p.parent.parent.name.rsplit(".", 1)[1]))
    on_path = shutil.which(f"python{version}")
    return Path(on_path) if on_path else None


@pytest.fixture(scope="module", params=sorted(GUNICORN_FOR))
def wheel_venv(request) -> tuple[Path, str, dict[str, str]]:
    """(python of a venv with the wheel installed, the Gunicorn version, its environment)."""
    version = request.param
    base = find_python(version)
    if base is None:
        pytest.skip(f"skipped: CPython {version} not found")
    gunicorn_version = GUNICORN_FOR[version]
    env = env_without_rust()
    assert shutil.which("cargo", path=env["PATH"]) is None
    assert shutil.which("rustc", path=env["PATH"]) is None
    venv = VENVS / f"wheel-py{version}-gunicorn{gunicorn_version}"
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if not python.exists():
        subprocess.run([str(base), "-m", "venv", "--clear", str(venv)], check=True, env=env)
        subprocess.run([*pip, f"gunicorn=={gunicorn_version}"], check=True, env=env)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y",
                    "gunicorn-prometheus-exporter"], check=True, env=env)
    # --only-binary: pip may not fall back to building anything from source.
    subprocess.run([*pip, "--only-binary", ":all:", WHEEL], check=True, env=env)
    no_cargo = subprocess.run(["sh", "-c", "command -v cargo"], env=env, capture_output=True)
    assert no_cargo.returncode != 0, no_cargo.stdout
    return python, gunicorn_version, env


def test_wheel_installs_without_rust_and_reports_its_version(wheel_venv, tmp_path):
    python, gunicorn_version, env = wheel_venv
    code = ("import gunicorn, gunicorn_prometheus_exporter as g, sys\n"
            "print(g.__version__, gunicorn.__version__, g._core.__file__, sep='\\n')")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    wheel_version = Path(WHEEL).name.split("-")[1]
    assert out[0] == wheel_version
    assert out[1] == gunicorn_version
    # The compiled core came from the wheel, into the venv.
    assert out[2].startswith(str(python.parent.parent)) and out[2].endswith(".abi3.so"), out[2]


def test_python_m_runs_the_standalone_exporter(wheel_venv, tmp_path):
    python, _, env = wheel_venv
    out = subprocess.run([str(python), "-m", "gunicorn_prometheus_exporter", "--help"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: gunicorn-prometheus-exporter ")
    assert "--multiproc-dir PROMETHEUS_MULTIPROC_DIR" in out.stdout


def wheel_metadata():
    with zipfile.ZipFile(WHEEL) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(wheel.read(name).decode())


def test_metadata_has_project_urls_and_the_worker_extras_and_no_test_extra():
    metadata = wheel_metadata()
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert sorted(urls) == ["Changelog", "Documentation", "Homepage", "Issues", "Repository"]
    assert all(url.startswith("https://github.com/") for url in urls.values()), urls
    assert sorted(metadata.get_all("Provides-Extra")) == ["gevent", "uvicorn"]
    by_extra: dict[str, list[str]] = {}
    for requirement in metadata.get_all("Requires-Dist"):
        name, _, marker = requirement.partition(";")
        extra = re.search(r"extra == ['\"](\w+)['\"]", marker)
        by_extra.setdefault(extra.group(1) if extra else "", []).append(name.strip())
    # Runtime: Gunicorn only. The test tools are a dependency group, not published.
    assert by_extra == {"": ["gunicorn>=20.1"], "gevent": ["gunicorn[gevent]"],
                        "uvicorn": ["uvicorn-worker"]}


def test_the_extras_install_what_their_worker_classes_need(tmp_path):
    # Gunicorn 27's gevent worker also needs packaging: Gunicorn's own extra has it.
    base = find_python("3.13")
    if base is None:
        pytest.skip("skipped: CPython 3.13 not found")
    env = env_without_rust()
    venv = VENVS / "wheel-extras-py3.13-gunicorn27.0.1"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([str(base), "-m", "venv", "--clear", str(venv)], check=True, env=env)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "gunicorn==27.0.1", f"{WHEEL}[gevent,uvicorn]"], check=True, env=env)
    subprocess.run([*pip, "--force-reinstall", "--no-deps", WHEEL], check=True, env=env)
    code = ("import gunicorn.workers.ggevent as g, uvicorn_worker as u\n"
            "from gunicorn_prometheus_exporter import PrometheusGeventWorker as G\n"
            "from gunicorn_prometheus_exporter import PrometheusUvicornWorker as U\n"
            "print(issubclass(G, g.GeventWorker), issubclass(U, u.UvicornWorker))")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("worker,args", [
    ("PrometheusWorker", []),
    ("PrometheusThreadWorker", ["--threads", "4"]),
])
def test_wheel_counts_every_request_exactly(wheel_venv, tmp_path, worker, args):
    python, _, env = wheel_venv
    port, metrics_port = free_port(), free_port()
    env = {**env, "PROMETHEUS_METRICS_PORT": str(metrics_port),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc")}
    log = open(tmp_path / "gunicorn.log", "wb")
    proc = subprocess.Popen(
        [str(python), "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--worker-class", f"gunicorn_prometheus_exporter.{worker}", *args, "wsgi_app:app"],
        cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_workers(proc, metrics_port, 2, tmp_path / "gunicorn.log")
        sent: Counter = Counter()
        rounds = 12
        for _ in range(rounds):
            for method, path, want in MIX:
                status, _ = request(port, method, path)
                assert status == want, (method, path, status)
                sent[(method, str(status))] += 1
        m = scrape_idle(metrics_port)
        assert m.get("gunicorn_worker_requests_total") == rounds * len(MIX)
        for (method, status), n in sent.items():
            assert m.get("gunicorn_worker_requests_total", method=method, status=status) == n
        assert m.get("gunicorn_worker_failed_requests_total", error_type="AppFailure") == rounds
        assert m.get("gunicorn_workers") == 2
    finally:
        stop_process(proc)
        log.close()
    assert proc.returncode == 0, (tmp_path / "gunicorn.log").read_text()


def scrape(metrics_port: int) -> Samples:
    status, body = request(metrics_port, "GET", "/metrics")
    assert status == 200, status
    return Samples(body.decode())


def wait_for_workers(proc: subprocess.Popen, metrics_port: int, workers: int,
                     log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"gunicorn exited early:\n{log.read_text()}"
        try:
            if len(scrape(metrics_port).matching("gunicorn_worker_start_time_seconds")) >= workers:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"gunicorn not ready:\n{log.read_text()}"
        time.sleep(0.1)


def scrape_idle(metrics_port: int, timeout: float = 10.0) -> Samples:
    """A scrape once no request is in flight (Gunicorn counts a request just
    after its response is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(metrics_port)
        if m.get("gunicorn_worker_requests_in_flight") == 0 or time.monotonic() > deadline:
            return m
        time.sleep(0.05)
