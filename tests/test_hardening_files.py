"""Hostile and failing filesystems never take Gunicorn down (the files and
processes): a full tmpfs, no inodes, corrupt or planted files,
symlinks, FIFOs, huge files, a held directory lock, dropped privileges, and a
second master on the same directory."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import APPS, WORKER, free_port, request, wait_for
from prometheus_client.mmap_dict import MmapedDict

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts tmpfs and drops privileges")

WARNING = re.compile(r"^\[(\d+)\] \[WARNING\] gunicorn_prometheus_exporter: (.*)$", re.M)



@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems: `tmpfs(options)` -> the mount point."""
    mounted: list[Path] = []

    def mount(options: str = "size=256k") -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def warnings_per_process(output: str, about: str = "", but_not: str = "lock") -> Counter:
    return Counter(pid for pid, text in WARNING.findall(output)
                   if about in text and (not but_not or but_not not in text))


def restarts(m) -> float:
    return m.get("gunicorn_worker_restarts_total")


def wait_serving(g, workers: int) -> list[int]:
    """For masters whose workers may record nothing: live worker pids once each answers."""
    def ready():
        if g.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{g.output()}")
        pids = g.worker_pids()
        if len(pids) < workers:
            return None
        try:
            return pids if request(g.port, timeout=5)[0] == 200 else None
        except OSError:
            return None
    return wait_for(ready, what="workers serving")


def next_pids(count: int) -> range:
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    return range(last + 1, last + 1 + count)


def kill_workers_and_wait(g, pids: list[int], sig=signal.SIGKILL) -> list[int]:
    """Signal some workers; once all are replaced, the pids of the replacements."""
    before = set(g.worker_pids())
    for pid in pids:
        os.kill(pid, sig)

    def replaced():
        now = set(g.worker_pids())
        return sorted(now - before) if len(now) == len(before) and not now & set(pids) else None
    return wait_for(replaced, what="replacement workers")


def metrics_files_open_in(pid: int, directory: Path) -> set[str]:
    """Names of the files of `directory` that process `pid` has open."""
    names = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith(f"{directory}/"):
            names.add(target[len(str(directory)) + 1:])
    return names


def test_workers_forked_after_scrapes_keep_none_of_the_files_the_master_reads(gunicorn, tmp_path):
    # The master's scrapes keep the workers' files open between scrapes
    # (storage/held.rs); a worker forked later must not inherit them, and a
    # dead worker's files are let go at the next scrape.
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    for _ in range(5):
        request(g.port, "/")
    first = g.worker_pids()
    g.scrape()
    held = metrics_files_open_in(g.pid, directory)
    assert {f"counter_worker{pid}.db" for pid in first} <= held, held
    new = kill_workers_and_wait(g, first[:1])
    request(g.port, "/")
    wait_for(lambda: g.scrape().get("gunicorn_worker_requests_in_flight") is not None,
             what="a scrape after the restart")
    for pid in new:
        # (The master's own files and the directory lock are inherited, as
        # from any parent; no worker's file but its own is.)
        workers_files = {name for name in metrics_files_open_in(pid, directory)
                         if "_worker" in name}
        assert all(str(pid) in name for name in workers_files), (pid, workers_files)
    held = metrics_files_open_in(g.pid, directory)
    assert not any(str(first[0]) in name for name in held), held


def test_full_tmpfs_degrades_to_counted_write_errors_and_no_process_dies(gunicorn, tmpfs):
    directory = tmpfs("size=256k")
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, ready=False)
    workers = wait_serving(g, 2)
    for _ in range(2):
        for n in range(200, 321):
            status, _ = request(g.port, path=f"/status/{n}")
            assert status == n
    m = g.scrape()
    assert g.proc.poll() is None
    assert sorted(g.worker_pids()) == sorted(workers)
    assert restarts(m) == 0
    assert m.get("gunicorn_exporter_write_errors_total") >= 1
    # One line per process about what it could not record, not one per request.
    logged = warnings_per_process(g.output(), "")
    assert logged and max(logged.values()) == 1, logged
    assert "Worker failed to boot" not in g.output()
    for _ in range(3):
        assert g.scrape_text()


def test_a_truncated_archive_does_not_kill_the_master(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    for n in range(200, 260):
        request(g.port, path=f"/status/{n}")
    kill_workers_and_wait(g, g.worker_pids()[:1])
    archives = wait_for(lambda: sorted(directory.glob("*_archive.db")), what="archives")
    assert any(a.stat().st_size > 4096 for a in archives)
    for archive in archives:
        os.truncate(archive, 20)
    for n in range(200, 260):
        request(g.port, path=f"/status/{n}")
    kill_workers_and_wait(g, g.worker_pids()[:1])
    wait_for(lambda: g.scrape().get("gunicorn_worker_restarts_total", reason="killed") == 2,
             what="second retire")
    assert g.proc.poll() is None
    assert request(g.port)[0] == 200


def test_no_inodes_left_workers_boot_and_serve_unrecorded(gunicorn, tmpfs):
    # The root, .owner and the master's two files; nothing left for workers.
    directory = tmpfs("size=1m,nr_inodes=4")
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, ready=False)
    workers = wait_serving(g, 2)
    for _ in range(20):
        assert request(g.port)[0] == 200
    m = g.scrape()
    assert m.get("gunicorn_exporter_write_errors_total") >= 2 * 3  # three files per worker
    assert sorted(g.worker_pids()) == sorted(workers)
    assert "Worker failed to boot" not in g.output()
    logged = warnings_per_process(g.output(), "")
    assert {str(p) for p in workers} <= set(logged) and max(logged.values()) == 1, logged


def test_corrupt_files_planted_for_the_next_workers_are_replaced(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    garbage = (200).to_bytes(4, "little") + bytes(4) + bytes(range(7, 250))
    planted = next_pids(1500)
    for pid in planted:
        for kind in ("counter", "histogram", "gauge_livesum"):
            (directory / f"{kind}_worker{pid}.db").write_bytes(garbage)
    new = kill_workers_and_wait(g, g.worker_pids())
    assert set(new) <= set(planted), "pids ran past the planted range"
    wait_for(lambda: len(g.scrape().matching("gunicorn_worker_start_time_seconds")) == 2,
             what="new workers recording")
    for _ in range(10):
        assert request(g.port)[0] == 200
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == 10  # recorded in fresh files
    # Each planted file was replaced when its worker opened it (a counted
    # write error), unless the master swept it first as the file of a
    # process that is gone: either way the new workers' files read cleanly.
    for pid in new:
        for kind in ("counter", "histogram", "gauge_livesum"):
            MmapedDict.read_all_values_from_file(str(directory / f"{kind}_worker{pid}.db"))
    assert g.proc.poll() is None and "Worker failed to boot" not in g.output()


def test_dropped_privileges_write_app_metrics_and_count_max_requests(gunicorn):
    # A directory the master makes (and so gives to the workers' user), outside
    # pytest's 0700 tree. This Python lives under /root (0700): the modules the
    # application imports are imported by the master first (a config file).
    parent = Path(tempfile.mkdtemp(prefix="gpe-privileges-"))
    os.chmod(parent, 0o755)
    directory = parent / "multiproc"
    config = parent / "gunicorn.conf.py"
    config.write_text("import gzip, prometheus_client, prometheus_client.multiprocess\n")
    try:
        g = gunicorn(["--user", "nobody", "--group", "nogroup", "--max-requests", "3",
                      "--config", str(config)], env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                     app="client_metrics_app:app", workers=1)
        assert (directory.stat().st_uid, directory.stat().st_gid) == (65534, 65534)
        for _ in range(12):
            assert request(g.port)[0] == 200
        m = wait_for(lambda: (lambda m: m if m.get("gunicorn_worker_restarts_total",
                                                   reason="max_requests") == 4 else None)(
            g.scrape()), what="four recycles")
        assert m.get("gunicorn_worker_restarts_total", reason="killed") == 0
        assert m.get("app_hits_total", path="/") == 12
        assert "PermissionError" not in g.output()
        g.stop()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def fd_flags(pid: int, directory: Path) -> list[tuple[str, int]]:
    """(target, open flags) of every fd of `pid` into `directory`."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        if target.startswith(str(directory)):
            out.append((target, int(re.search(r"flags:\s+(\d+)", info).group(1), 8)))
    return out


def test_planted_symlinks_are_never_followed(gunicorn, tmp_path):
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o777)
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious"
    precious.write_bytes(b"precious\n")
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    workers = g.worker_pids()
    for pid in workers:
        (directory / f"exit_{pid}.note").symlink_to(precious)
    for name in ("counter_archive.db", "histogram_archive.db", ".lock"):
        (directory / name).unlink(missing_ok=True)
        (directory / name).symlink_to(outside / f"created-{name}")
    for pid in next_pids(1500):
        for kind in ("counter", "histogram", "gauge_livesum"):
            (directory / f"{kind}_worker{pid}.db").symlink_to(outside / f"created-{kind}-{pid}")
    for _ in range(10):
        assert request(g.port)[0] == 200
    # Graceful exits write their notes; the master then folds into the archives.
    kill_workers_and_wait(g, workers, signal.SIGTERM)
    wait_for(lambda: g.scrape().get("gunicorn_worker_restarts_total") >= 2, what="retires")
    for _ in range(10):
        assert request(g.port)[0] == 200
    assert precious.read_bytes() == b"precious\n"
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    assert g.proc.poll() is None and "Worker failed to boot" not in g.output()
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 20
    # Every fd of the core into the directory is close-on-exec (master and workers).
    for pid in [g.pid, *g.worker_pids()]:
        fds = fd_flags(pid, directory)
        assert fds, pid
        for target, flags in fds:
            assert flags & os.O_CLOEXEC, (pid, target)


def test_a_fifo_and_a_huge_file_neither_hang_nor_bloat_the_master(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    before = g.scrape().get("gunicorn_exporter_read_errors_total")
    os.mkfifo(directory / "counter_fifo.db")
    huge = directory / "counter_huge.db"
    with open(huge, "wb") as f:
        f.write((1_500_000_000).to_bytes(4, "little") + bytes(4))
        f.truncate(2 << 30)  # sparse
    m = g.scrape()  # a FIFO hung this scrape forever
    assert m.get("gunicorn_exporter_read_errors_total") == before + 2
    assert m.get("process_resident_memory_bytes") < 256 << 20
    # The arbiter is not blocked: a killed worker is replaced and counted.
    kill_workers_and_wait(g, g.worker_pids()[:1])
    wait_for(lambda: g.scrape().get("gunicorn_worker_restarts_total", reason="killed") == 1,
             what="restart counted")
    assert request(g.port)[0] == 200
    assert g.stop() == 0


def test_a_held_directory_lock_defers_folds_and_never_blocks_the_arbiter(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    for _ in range(10):
        assert request(g.port)[0] == 200
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 10  # all counted: kill now
    lock = open(directory / ".lock", "a+")  # noqa: SIM115 - held across the test
    try:
        fcntl.lockf(lock, fcntl.LOCK_SH)  # as a scrape that never ends would
        victim = g.worker_pids()[0]
        kill_workers_and_wait(g, [victim])
        wait_for(lambda: g.scrape().get("gunicorn_worker_restarts_total", reason="killed") == 1,
                 what="restart counted while the lock is held")
        assert (directory / f"counter_worker{victim}.db").exists()  # kept, not lost
        assert g.scrape_idle().get("gunicorn_worker_requests_total") == 10
        assert g.scrape().get("gunicorn_exporter_write_errors_total") == 1  # the deferral
        read_errors = g.scrape().get("gunicorn_exporter_read_errors_total")
        fcntl.lockf(lock, fcntl.LOCK_UN)
        fcntl.lockf(lock, fcntl.LOCK_EX)  # as a foreign process would: scrapes do not wait
        stale = g.scrape()
        assert stale.get("gunicorn_worker_requests_total") == 10
        assert stale.get("gunicorn_exporter_read_errors_total") == read_errors + 1
    finally:
        lock.close()
    wait_for(lambda: not (directory / f"counter_worker{victim}.db").exists(),
             what="the deferred fold")
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == 10
    assert len(warnings_per_process(g.output(), "lock", but_not="")) >= 1


def start_master(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{free_port()}",
         "--worker-class", WORKER, "wsgi_app:app"],
        cwd=APPS, capture_output=True, timeout=60, start_new_session=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory),
             "PROMETHEUS_METRICS_PORT": str(free_port())})


def test_one_master_per_directory_and_a_dead_owner_is_taken_over(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    first = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    for _ in range(5):
        assert request(first.port)[0] == 200
    os.kill(first.pid, signal.SIGHUP)  # same process: still the owner
    wait_for(lambda: first.scrape().get("gunicorn_worker_restarts_total", reason="reload") == 2,
             what="reload")
    files = sorted(p.name for p in directory.iterdir())
    second = start_master(directory)
    errors = [ln for ln in second.stderr.decode().splitlines() if ln.startswith("Error:")]
    assert second.returncode != 0
    assert len(errors) == 1, second.stderr.decode()
    assert "PROMETHEUS_MULTIPROC_DIR" in errors[0] and str(first.pid) in errors[0]
    assert sorted(p.name for p in directory.iterdir()) == files
    assert first.scrape_idle().get("gunicorn_worker_requests_total") == 5
    # Only the master dies: its orphaned workers (stopped, so they stay) do not
    # hold its lock.
    orphans = first.worker_pids()
    for pid in orphans:
        os.kill(pid, signal.SIGSTOP)
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait()
    third = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert (directory / ".owner").read_text() == f"{third.pid}\n"
    assert third.scrape_idle().get_or("gunicorn_worker_requests_total", 0) == 0
    assert all(Path(f"/proc/{pid}").exists() for pid in orphans)
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)


UPGRADE = """
import os, subprocess, sys
from gunicorn_prometheus_exporter import _core
directory = sys.argv[1]
assert _core.prepare_directory(directory) is None
open(os.path.join(directory, "counter_1.db"), "wb").close()
child = subprocess.run([sys.executable, "-c",
    "import sys; from gunicorn_prometheus_exporter import _core;"
    "print(_core.prepare_directory(sys.argv[1]))", directory],
    capture_output=True, text=True, check=True)
print(child.stdout.strip(), os.getpid(), os.path.exists(os.path.join(directory, "counter_1.db")))
sys.stdout.flush()
sys.stdin.read()
"""


def test_a_child_of_the_owner_takes_over_without_clearing_as_usr2_does(tmp_path):
    directory = tmp_path / "multiproc"
    owner = subprocess.Popen([sys.executable, "-c", UPGRADE, str(directory)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        upgraded_from, owner_pid, kept = owner.stdout.readline().split()
        assert upgraded_from == owner_pid == str(owner.pid)
        assert kept == "True"
        # Not a child of the owner: refused, nothing touched.
        stranger = subprocess.run(
            [sys.executable, "-c", "import sys; from gunicorn_prometheus_exporter import _core;"
             "_core.prepare_directory(sys.argv[1])", str(directory)],
            capture_output=True, text=True)
        assert stranger.returncode == 1
        assert f"in use by the Gunicorn master pid {owner.pid}" in stranger.stderr
        assert (directory / "counter_1.db").exists()
    finally:
        owner.stdin.close()
        owner.wait(timeout=30)
