"""The multiprocess directory survives what others do to it while Gunicorn
runs: removed (a tmp cleaner), files truncated or grown by another process,
made read-only for the workers, files replaced by directories, and private
directories left behind by masters that were killed."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import request, request_in_background, send_mix, wait_for
from test_hardening_files import kill_workers_and_wait, warnings_per_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changes owners and modes")

SIZE_PAST_THE_CAP = 100 << 20  # the reader's cap is 64 MiB


def private_directory(tmp: Path) -> Path:
    (found,) = tmp.glob("gunicorn-prometheus-*")
    return found


def requests_by_label(m) -> Counter:
    counted: Counter = Counter()
    for s in m.matching("gunicorn_worker_requests_total"):
        counted[(s.labels["method"], s.labels["status"])] += s.value
    return +counted


def our_tracebacks(output: str) -> bool:
    """Whether a traceback went through this package or one of its hooks
    failed (the application's own errors are logged with theirs)."""
    return "gunicorn_prometheus_exporter/" in output or "hook failed" in output


def send_in_background(port: int, rounds: int) -> tuple[threading.Thread, list]:
    """A client thread sending MIX `rounds` times; its list holds the Counter
    of what was sent (or the exception that stopped it)."""
    out: list = []

    def run() -> None:
        try:
            out.append(send_mix(port, rounds))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_removed_directory_is_made_again_and_every_count_is_kept(gunicorn, tmp_path):
    # What a tmp cleaner does to a private directory under /tmp, under load;
    # a worker leaves while it is gone, and every worker is recycled after.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    g = gunicorn(env={"TMPDIR": str(tmp)})
    directory = private_directory(tmp)
    sent = send_mix(g.port, 5)
    assert requests_by_label(g.scrape_settled(directory)) == sent
    thread, out = send_in_background(g.port, 10)
    time.sleep(0.2)
    shutil.rmtree(directory)
    leaving = g.worker_pids()[0]
    os.kill(leaving, signal.SIGTERM)  # leaves its note and files while it is gone
    thread.join()
    (during,) = out
    assert isinstance(during, Counter), during
    sent += during
    wait_for(lambda: (directory / ".owner").is_file(), what="the directory made again")
    wait_for(lambda: leaving not in g.worker_pids() and len(g.worker_pids()) == 2,
             what="the replacement")
    sent += send_mix(g.port, 5)
    os.kill(g.pid, signal.SIGHUP)  # every worker writes its files out and leaves
    wait_for(lambda: (lambda m: m if m.get("gunicorn_worker_restarts_total",
                                               reason="reload") == 2 else None)(g.scrape()),
             what="the reload")
    m = g.scrape_settled(directory)
    assert requests_by_label(m) == sent
    # The worker that left while the directory was gone left its note.
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 1
    assert m.get("gunicorn_worker_restarts_total", reason="crashed") == 0
    assert m.get("gunicorn_master_signals_total", signal="hup") == 1
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (directory / ".owner").read_text() == f"{g.pid}\n"
    assert (directory / ".private").is_file()
    assert g.proc.poll() is None
    output = g.output()
    assert not our_tracebacks(output), output
    made_again = [line for line in output.splitlines() if "multiprocess directory" in line]
    assert len(made_again) == 1 and f"[{g.pid}]" in made_again[0], made_again


def test_a_worker_never_idle_writes_its_files_out_again(gunicorn, tmp_path):
    # A thread worker with a request always in flight never goes idle: its
    # files are written out again at the end of its next request all the same.
    directory = tmp_path / "multiproc"
    g = gunicorn(["--worker-class", "gunicorn_prometheus_exporter.PrometheusThreadWorker",
                  "--threads", "4"], env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                 workers=1)
    for _ in range(5):
        assert request(g.port)[0] == 200
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 5
    slow = request_in_background(g.port, "/sleep/10")
    try:
        wait_for(lambda: g.scrape().get_or("gunicorn_worker_requests_in_flight", 0) == 1,
                 what="the slow request in flight")
        shutil.rmtree(directory)
        sent = [5]

        def counted_again():
            assert request(g.port)[0] == 200
            sent[0] += 1
            m = g.scrape()
            back = (m.get_or("gunicorn_worker_requests_total", 0) == sent[0]
                    and m.get_or("gunicorn_worker_requests_in_flight", 0) >= 1)
            return m if back else None

        wait_for(counted_again, timeout=8, what="every request and the gauges back")
        assert slow.poll() is None  # still in flight: the worker was never idle
    finally:
        slow.wait(timeout=30)
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == sent[0] + 1


def test_a_directory_removed_under_workers_of_another_user_is_given_back_to_them(gunicorn):
    # The master made the directory for --user workers: made again, it is
    # theirs again, and what they counted before is kept.
    parent = Path(tempfile.mkdtemp(prefix="gpe-removed-"))
    os.chmod(parent, 0o755)
    directory = parent / "multiproc"
    config = parent / "gunicorn.conf.py"
    config.write_text("import gzip, prometheus_client, prometheus_client.multiprocess\n")
    try:
        g = gunicorn(["--user", "nobody", "--group", "nogroup", "--config", str(config)],
                     env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
        sent = send_mix(g.port, 3)
        assert requests_by_label(g.scrape_idle()) == sent
        shutil.rmtree(directory)
        wait_for(lambda: (directory / ".owner").is_file(), what="the directory made again")
        assert (directory.stat().st_uid, directory.stat().st_gid) == (65534, 65534)
        sent += send_mix(g.port, 3)
        # Every worker leaves: each writes its exit note in the new directory.
        os.kill(g.pid, signal.SIGHUP)
        m = wait_for(lambda: (lambda m: m if m.get("gunicorn_worker_restarts_total",
                                                   reason="reload") == 2 else None)(
            g.scrape()), what="the reload")
        m = g.scrape_settled(directory)
        assert requests_by_label(m) == sent
        assert m.get("gunicorn_worker_restarts_total", reason="killed") == 0
        assert not our_tracebacks(g.output())
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_truncating_the_masters_own_files_neither_kills_it_nor_loses_its_counts(
        gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    kill_workers_and_wait(g, g.worker_pids()[:1])
    os.kill(g.pid, signal.SIGTTIN)
    m = wait_for(lambda: (lambda m: m if m.get("gunicorn_workers") == 3 else None)(
        g.scrape()), what="a third worker")
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 1
    assert m.get("gunicorn_master_signals_total", signal="ttin") == 1
    for name, size in ((f"counter_master{g.pid}.db", 0),
                       (f"gauge_livesum_master{g.pid}.db", 12)):
        os.truncate(directory / name, size)
    # The next exit counts a restart in the master's own file.
    kill_workers_and_wait(g, g.worker_pids()[:1])
    os.kill(g.pid, signal.SIGTTOU)
    m = wait_for(lambda: (lambda m: m if m.get("gunicorn_workers") == 2 else None)(
        g.scrape()), what="back to two workers")
    assert g.proc.poll() is None, g.output()
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 2
    assert m.get("gunicorn_master_signals_total", signal="ttin") == 1
    assert m.get("gunicorn_master_signals_total", signal="ttou") == 1
    assert m.get("gunicorn_workers_desired") == 2
    assert request(g.port)[0] == 200


def test_a_worker_whose_files_are_truncated_loses_no_request(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=1)
    (pid,) = g.worker_pids()
    for _ in range(10):
        assert request(g.port)[0] == 200
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 10
    files = [directory / f"{kind}_worker{pid}.db" for kind in ("counter", "histogram")]
    files.append(directory / f"native_worker{pid}.ndb")
    for path in files:
        os.truncate(path, 0)
    # What lay in the truncated pages is gone; no request is.
    for _ in range(20):
        assert request(g.port)[0] == 200
    assert g.worker_pids() == [pid]

    def written_again():
        request(g.port)
        sent[0] += 1
        return all(p.stat().st_size >= 65536 for p in files)
    sent = [20]
    wait_for(written_again, what="the files written again")
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == sent[0]
    assert m.get("gunicorn_worker_restarts_total") == 0
    assert g.worker_pids() == [pid]
    assert g.proc.poll() is None


def test_files_grown_past_the_read_cap_are_read_and_trimmed(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    sent = send_mix(g.port, 3)
    assert requests_by_label(g.scrape_idle()) == sent  # all counted: kill now
    kill_workers_and_wait(g, g.worker_pids()[:1])
    m = g.scrape_settled(directory)
    assert requests_by_label(m) == sent
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 1
    live = g.worker_pids()
    grown = [directory / "counter_archive.db", directory / "histogram_archive.db",
             directory / f"counter_master{g.pid}.db",
             *(directory / f"counter_worker{pid}.db" for pid in live)]
    for path in grown:
        os.truncate(path, SIZE_PAST_THE_CAP)  # sparse
    m = g.scrape()
    assert requests_by_label(m) == sent  # the folded history is still served
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 1
    sent += send_mix(g.port, 2)
    assert requests_by_label(g.scrape_idle()) == sent
    kill_workers_and_wait(g, live)
    m = g.scrape_settled(directory)
    assert requests_by_label(m) == sent
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 3
    # The master trims what it owns back to what it wrote.
    wait_for(lambda: all(p.stat().st_size < 1 << 20 for p in grown[:3]), what="trimmed")
    assert g.proc.poll() is None


def test_a_directory_no_one_may_write_in_loses_no_count_and_no_exit_note(gunicorn, tmp_path):
    # Read-only for everyone, root included (immutable): a worker that
    # leaves cannot write its note there, the new one cannot make its files.
    directory = tmp_path / "multiproc"
    g = gunicorn(["--max-requests", "20"], env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                 workers=1)
    (first,) = g.worker_pids()
    for _ in range(10):
        assert request(g.port)[0] == 200
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 10
    sent = 10
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        for _ in range(10):  # the first worker's last ten: it leaves
            assert request(g.port)[0] == 200
        sent += 10
        (second,) = wait_for(lambda: [p for p in g.worker_pids() if p != first],
                             what="the second worker")
        for _ in range(10):
            assert request(g.port)[0] == 200
        sent += 10
        assert not (directory / f"counter_worker{second}.db").exists()
        m = g.scrape()
        assert m.get("gunicorn_worker_restarts_total", reason="max_requests") == 1
        assert m.get("gunicorn_worker_restarts_total", reason="killed") == 0
        assert m.get("gunicorn_exporter_write_errors_total") >= 1
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)

    def written_out():
        nonlocal sent
        assert request(g.port)[0] == 200
        sent += 1
        # Written out when it goes idle, or as it leaves (max_requests).
        return (directory / f"counter_worker{second}.db").exists() or \
            second not in g.worker_pids()
    wait_for(written_out, what="the second worker's files")
    m = g.scrape_settled(directory)
    assert m.get("gunicorn_worker_requests_total") == sent
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 0
    logged = warnings_per_process(g.output(), "")
    assert logged and max(logged.values()) == 1, logged
    assert g.proc.poll() is None


def test_files_replaced_by_directories_are_written_again(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=1)
    for _ in range(10):
        assert request(g.port)[0] == 200
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 10  # kill now
    (new,) = kill_workers_and_wait(g, g.worker_pids())
    for _ in range(10):
        assert request(g.port)[0] == 200
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 20
    replaced = [directory / "counter_archive.db", directory / f"counter_worker{new}.db"]
    for path in replaced:
        path.unlink()
        path.mkdir()
    sent = 20

    def written_again():
        assert request(g.port)[0] == 200
        nonlocal sent
        sent += 1
        return all(p.is_file() for p in replaced)
    wait_for(written_again, what="the files written again")
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == sent
    kill_workers_and_wait(g, g.worker_pids())
    m = g.scrape_settled(directory)
    assert m.get("gunicorn_worker_requests_total") == sent
    assert m.get("gunicorn_worker_restarts_total", reason="killed") == 2
    assert g.proc.poll() is None


def test_a_new_master_removes_the_private_directories_of_dead_masters(
        gunicorn, tmp_path, processes):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    first = gunicorn(env={"TMPDIR": str(tmp)})
    assert request(first.port)[0] == 200
    dead = private_directory(tmp)
    workers = first.worker_pids()
    processes.update(workers)
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait()
    for pid in workers:  # as Gunicorn's orphaned workers do on their own
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(_alive(pid) for pid in workers), what="the orphans gone")
    # Not a dead master's private directory: no marker, another owner, a
    # process still alive, a symlink.
    decoys = {name: tmp / f"gunicorn-prometheus-{name}"
              for name in ("unmarked", "others", "alive", "link")}
    target = tmp_path / "target"
    for name, path in decoys.items():
        made = target if name == "link" else path
        made.mkdir()
        (made / ".owner").write_text(f"{first.pid}\n")
        if name != "unmarked":
            (made / ".private").write_bytes(b"")
    (decoys["alive"] / f"counter_worker{os.getpid()}.db").write_bytes(b"")
    for path in decoys["others"].iterdir():
        os.chown(path, 65534, 65534)
    os.chown(decoys["others"], 65534, 65534)
    decoys["link"].symlink_to(target)
    second = gunicorn(env={"TMPDIR": str(tmp)})
    assert not dead.exists()
    assert all(os.path.lexists(path) for path in decoys.values())
    assert sorted(p.name for p in target.iterdir()) == [".owner", ".private"]
    own = set(tmp.iterdir()) - set(decoys.values())
    assert len(own) == 1, own
    assert (own.pop() / ".private").is_file()
    assert request(second.port)[0] == 200
    swept = [line for line in second.output().splitlines()
             if "[INFO]" in line and "removed 1 private multiprocess directories" in line]
    assert len(swept) == 1 and str(dead) in swept[0], swept
    assert second.stop() == 0
    assert set(tmp.iterdir()) == set(decoys.values())  # the second took its own away


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
