"""What README.md, ARCHITECTURE.md and CHANGELOG.md state, held against a real
run, the package and the bench's results; and the demo they point to."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import gunicorn_prometheus_exporter
import pytest
from conftest import Samples, env_without_rust, free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "ARCHITECTURE.md").read_text()
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
WHEEL = os.environ.get("GPE_WHEEL")


def files_by_owner(directory: Path, pids: list[int]) -> tuple[dict[int, set[str]], set[str]]:
    """Each live worker's files (by the pid in their name), and all the others."""
    mine = {pid: {f.name for f in directory.iterdir() if f.name.split(".")[0]
                  .endswith(f"_worker{pid}")} for pid in pids}
    claimed = set().union(*mine.values())
    return mine, {f.name for f in directory.iterdir()} - claimed


def test_files_per_live_worker_are_those_readme_and_architecture_name(gunicorn, tmp_path):
    (stated,) = re.findall(r"holds (\d+) files per live worker", README)
    (listed,) = re.findall(r"opens a `WorkerMeter` \(\w+ files:([^)]*)\)", ARCHITECTURE)
    names = re.findall(r"`([^`]+<pid>[^`]*)`", listed)
    assert len(names) == int(stated)
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=3)
    for pid, files in files_by_owner(directory, g.worker_pids())[0].items():
        assert files == {n.replace("<pid>", str(pid)) for n in names}, pid
    # "plus the master's own and a few archives, however many workers have died"
    counts = []
    for _ in range(4):
        victim = g.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda v=victim: v not in g.worker_pids() and len(g.worker_pids()) == 3,
                 what="a replacement")
        g.scrape_settled(directory)
        mine, others = files_by_owner(directory, g.worker_pids())
        assert [len(files) for files in mine.values()] == [int(stated)] * 3
        counts.append(len(others))
    assert counts == [counts[0]] * 4, counts


def test_changelog_never_says_a_worker_class_the_package_has_was_removed():
    removed = [bullet for section in re.findall(r"### Removed[^\n]*\n(.*?)(?=\n#|\Z)",
                                                CHANGELOG, re.S)
               for bullet in re.split(r"\n- ", section)]
    assert removed
    classes = [n for n in gunicorn_prometheus_exporter.__all__ if n.endswith("Worker")]
    kinds = {re.fullmatch(r"Prometheus(\w*?)Worker", n).group(1).lower() for n in classes} - {""}
    assert {"eventlet", "gevent", "thread", "uvicorn", "asgi"} <= kinds
    said = [b for b in removed for kind in kinds
            if re.search(rf"\b{kind}\b[^.]*worker class", b, re.I)]
    assert not said, said
    # README's table of worker classes names each of them.
    for name in classes:
        assert f"`gunicorn_prometheus_exporter.{name}`" in README, name


def test_per_request_figures_agree_between_the_bench_readme_and_changelog():
    cost = json.loads((ROOT / "benches" / "results.json").read_text())["request_cost"]
    ours, old = f"{cost['this']['ns']:.0f} ns", f"{cost['pypi024']['ns'] / 1000:.1f} µs"
    row = next(ln for ln in README.splitlines()
               if ln.startswith("| instrumentation per request") and "(`this`)" in ln)
    assert f"**{ours}**" in row and f"0.2.4: {old}" in row, (ours, old, row)
    (line,) = re.findall(r"Per-request cost: .*", CHANGELOG)
    assert line == f"Per-request cost: {ours} instead of {old} (README, Benchmarks).", line


def run_demo(env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """examples/demo.sh on free ports, stopped with everything it started."""
    env = {**env, "PORT": str(free_port()), "PROMETHEUS_METRICS_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
    proc = subprocess.Popen(["bash", str(ROOT / "examples" / "demo.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_process(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.skipif(not WHEEL, reason="GPE_WHEEL is unset (tests/run.sh sets it)")
def test_demo_installs_the_wheel_there_is_and_shows_exact_counts():
    # The wheel tests/run.sh built and installed here: the demo reinstalls the same.
    result = run_demo({**os.environ, "DEMO_WHEELS": str(Path(WHEEL).parent)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"--- installing {WHEEL}\n"), result.stdout
    assert "serving metrics at http://127.0.0.1:" in result.stderr
    shown = result.stdout.split("(request counters) ---\n", 1)[1]
    m = Samples(shown)
    assert m.get("gunicorn_worker_requests_total", status="200") == 20
    assert m.get("gunicorn_worker_requests_total", status="404") == 5
    assert m.get("gunicorn_worker_requests_total", status="500") == 1
    assert m.get("gunicorn_worker_failed_requests_total", error_type="AppFailure") == 1


def test_demo_without_a_wheel_says_it_builds_and_how_long_before_it_starts(tmp_path):
    # No wheel and no Rust: it says what it would do, then why it cannot.
    result = run_demo({**env_without_rust(), "DEMO_WHEELS": str(tmp_path)}, timeout=60)
    assert result.returncode == 1
    said = result.stdout.splitlines()
    assert said[0].startswith(f"--- no wheel of {gunicorn_prometheus_exporter.__version__} in "
                              f"{tmp_path}: building the Rust core from source"), said
    assert re.search(r"about \d+ to \d+ minutes", said[1]), said
    assert result.stderr.startswith("error: building needs a Rust toolchain"), result.stderr
