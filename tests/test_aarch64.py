"""The manylinux2014 aarch64 wheel, run: Debian's arm64 CPython under qemu-user
(qemu-aarch64-static) runs Gunicorn's master and workers with the wheel's
compiled core; the host sends real HTTP on 127.0.0.1 and SIGKILLs a worker.
Every request is counted exactly, the killed worker's restart has its reason,
and the scrape is valid in text, OpenMetrics and protobuf.

tests/run.sh builds the wheel with scripts/build-wheels.sh and passes its path
in GPE_WHEEL_AARCH64, and makes the arm64 root with tests/arm64-root.sh
(target/arm64-root, kept between runs). The interpreter is started through
qemu directly, so no binfmt handler is needed. The host's pip installs the
wheel and Gunicorn for arm64 into a directory on PYTHONPATH."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MIX, send_mix, wait_for
from metrics_proto import decode_delimited
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

WHEEL = os.environ.get("GPE_WHEEL_AARCH64")
pytestmark = pytest.mark.skipif(
    not WHEEL, reason="GPE_WHEEL_AARCH64 is unset (tests/run.sh sets it to the wheel it builds)")

ROOT = Path(os.environ.get("GPE_ARM64_ROOT")
            or Path(__file__).resolve().parent.parent / "target" / "arm64-root")
GUNICORN = "27.0.1"
# Emulated CPython is many times slower than native: it takes seconds to start.
SLOW = 180.0
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PROTOBUF = ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
            "encoding=delimited")
EM_AARCH64 = 183


@pytest.fixture(scope="module")
def arm64(tmp_path_factory) -> tuple[list[str], dict[str, str]]:
    """(the command that runs arm64 CPython, the environment that gives it the
    wheel and Gunicorn)."""
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "qemu-aarch64-static not found (Debian's qemu-user-static)"
    python = ROOT / "usr" / "bin" / "python3"
    assert python.exists(), f"no arm64 root: bash tests/arm64-root.sh {ROOT}"
    version = re.fullmatch(r"python(3\.\d+)", os.readlink(python))[1]
    site = tmp_path_factory.mktemp("arm64-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--target", str(site), "--platform", "manylinux2014_aarch64", "--only-binary=:all:",
         "--python-version", version, "--implementation", "cp", WHEEL, f"gunicorn=={GUNICORN}"],
        check=True)
    command = [qemu, str(ROOT / "usr" / "bin" / f"python{version}")]
    env = {"QEMU_LD_PREFIX": str(ROOT), "PYTHONPATH": str(site)}
    code = ("import platform, gunicorn, gunicorn_prometheus_exporter as g\n"
            "print(platform.machine(), gunicorn.__version__, g.__version__, g._core.__file__)")
    out = subprocess.run([*command, "-c", code], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=SLOW, check=True).stdout.split()
    assert out[:3] == ["aarch64", GUNICORN, Path(WHEEL).name.split("-")[1]], out
    core = Path(out[3])
    assert core.parent.parent == site and core.name.endswith(".abi3.so"), core
    assert struct.unpack_from("<H", core.read_bytes(), 18)[0] == EM_AARCH64
    return command, env


def start(gunicorn, arm64):
    command, env = arm64
    g = gunicorn(workers=2, python=command, env=env, ready=False)
    wait_booted(g)
    g.wait_ready(2, timeout=SLOW)
    for pid in (g.pid, *g.worker_pids()):
        assert os.readlink(f"/proc/{pid}/exe").endswith("qemu-aarch64-static"), pid
    return g


def wait_booted(g, workers: int = 2, gone: tuple[int, ...] = ()) -> list[int]:
    """The workers, none of them `gone`, once each has started its resource
    sampler: read from /proc, not by scraping. Under qemu-user (Debian 12's
    7.2) a worker forked while the master answered scrapes sometimes hung at
    its first thread start, both its threads waiting on a lock in qemu's own
    memory (the master starts and ends threads to answer scrapes, and qemu can
    carry a lock that such a thread held into the child). Such a worker never
    takes a request and holds up the master's shutdown, so nothing scrapes
    while workers start."""

    def booted() -> list[int] | None:
        if g.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited early:\n{g.log_path.read_text()}")
        pids = g.worker_pids()
        if len(pids) != workers or set(pids) & set(gone):
            return None
        return pids if all(map(sampler_started, pids)) else None

    return wait_for(booted, SLOW, f"{workers} workers, each with its sampler thread")


def sampler_started(pid: int) -> bool:
    try:
        return any((task / "comm").read_text().strip() == "gpe-sampler"
                   for task in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False


def test_aarch64_wheel_counts_every_request_exactly_across_a_killed_worker(gunicorn, arm64):
    g = start(gunicorn, arm64)
    sent = send_mix(g.port, 3)
    m = g.scrape_idle(timeout=SLOW)
    assert m.get("gunicorn_worker_requests_total") == 3 * len(MIX)
    for (method, status), n in sent.items():
        assert m.get("gunicorn_worker_requests_total", method=method, status=status) == n
    assert m.get("gunicorn_worker_failed_requests_total", error_type="AppFailure") == 3
    assert m.get("gunicorn_worker_restarts_total") == 0

    victim = g.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_booted(g, gone=(victim,))
    wait_for(lambda: g.scrape().get("gunicorn_worker_restarts_total", reason="killed") == 1,
             SLOW, "the killed worker's restart")
    g.scrape_settled(timeout=SLOW)

    sent += send_mix(g.port, 4)
    m = g.scrape_idle(timeout=SLOW)
    # The dead worker's counts are kept, the replacement's added: 24 + 32.
    assert m.get("gunicorn_worker_requests_total") == 7 * len(MIX)
    for (method, status), n in sent.items():
        assert m.get("gunicorn_worker_requests_total", method=method, status=status) == n
    assert m.get("gunicorn_worker_failed_requests_total", error_type="AppFailure") == 7
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 1
    assert m.get("gunicorn_worker_restarts_total") == 1
    assert {s.labels["worker_id"] for s in m.matching("gunicorn_worker_memory_bytes")} == {"1", "2"}
    assert g.stop() == 0, g.log_path.read_text()


def test_aarch64_wheel_scrape_is_valid_in_text_openmetrics_and_protobuf(gunicorn, arm64):
    g = start(gunicorn, arm64)
    send_mix(g.port, 2)
    total = 2 * len(MIX)
    m = g.scrape_idle(timeout=SLOW)
    assert m.get("gunicorn_worker_requests_total") == total

    content_type, text = g.scrape_response()
    assert content_type == TEXT
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert checked.returncode == 0 and not checked.stdout and not checked.stderr, checked

    content_type, body = g.scrape_response(OPENMETRICS)
    assert content_type == OPENMETRICS
    assert body.endswith(b"# EOF\n")
    families = {f.name: f for f in parse_om(body.decode())}  # a strict parser
    assert sum(s.value for s in families["gunicorn_worker_requests"].samples
               if s.name == "gunicorn_worker_requests_total") == total

    content_type, body = g.scrape_response(PROTOBUF)
    assert content_type == PROTOBUF
    decoded = {f.name: f for f in decode_delimited(body)}
    text_families = {line.split()[2] for line in text.decode().splitlines()
                     if line.startswith("# TYPE ")}
    assert set(decoded) == text_families
    assert sum(x.counter.value for x in decoded["gunicorn_worker_requests_total"].metric) == total
    assert g.stop() == 0, g.log_path.read_text()
