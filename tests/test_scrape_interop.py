"""The standalone exporter reads prometheus_client's own multiprocess files
incrementally (it remembers each file's entries between scrapes): after every
kind of change to the directory it serves exactly the samples that
prometheus_client's MultiProcessCollector reads from the same files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, request, stop_process
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_server import start_standalone

# A process writing with prometheus_client under a pid of our choosing. Each
# line on stdin is a step: it writes that step's values, then says "ok".
WRITER = r'''
import sys
from prometheus_client import Counter, Gauge, Histogram, Summary, values
pid, variant = sys.argv[1], sys.argv[2]
values.ValueClass = values.MultiProcessValue(lambda: pid)
c = Counter("app_hits", "Hits.", ["path"])
gauges = {mode: Gauge(f"app_g_{mode}", f"Gauge {mode}.", ["k"], multiprocess_mode=mode)
          for mode in ("all", "liveall", "min", "max", "sum", "livesum", "mostrecent",
                       "livemostrecent")}
h = Histogram("app_h", "Latency.", ["path"], buckets=(0.1, 0.5, 1.0, 2.5))
s = Summary("app_s", "Sizes.", ["path"])
for line in sys.stdin:
    step = int(line)
    for i in range(step + 2):
        path = f"/{variant}{i}"
        c.labels(path).inc(int(pid) % 7 + i + step)
        h.labels(path).observe(0.05 * (i + 1) * (step + 1))
        s.labels(path).observe(10 * i + step)
    for n, (mode, g) in enumerate(gauges.items()):
        g.labels(f"{variant}{step % 2}").set(int(pid) * 10 + n + step)
    print("ok", flush=True)
'''


class Writer:
    def __init__(self, directory: Path, pid: int, variant: str = "p") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(pid), variant], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)})

    def step(self, n: int) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def stop(self) -> None:
        self.proc.stdin.close()
        stop_process(self.proc)


def app_families(text: str) -> dict:
    """Families named app_*: name -> (type, help, set of samples)."""
    return {f.name: (f.type, f.documentation,
                     {(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples})
            for f in text_string_to_metric_families(text) if f.name.startswith("app_")}


@pytest.fixture
def writers():
    started: list[Writer] = []
    yield started
    for w in started:
        w.stop()


def test_incremental_reads_match_multiprocess_collector_after_every_change(tmp_path, writers):
    directory = tmp_path / "multiproc"
    directory.mkdir()

    def writer(pid: int, variant: str = "p") -> Writer:
        w = Writer(directory, pid, variant)
        writers.append(w)
        return w

    a, b = writer(101), writer(102)
    a.step(0)
    b.step(0)
    port = free_port()
    sidecar = start_standalone(["--multiproc-dir", str(directory), "--port", str(port)])
    scrapes = []

    def same_as_collector(what: str) -> dict:
        status, body = request(port, "GET", "/metrics")
        assert status == 200
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        ours, theirs = app_families(body.decode()), app_families(generate_latest(registry).decode())
        assert ours == theirs, what
        scrapes.append(ours)
        return ours

    try:
        assert f"127.0.0.1:{port}" in sidecar.stdout.readline()
        first = same_as_collector("first read")
        # 101 % 7 = 3, 102 % 7 = 4: /p0 counts 3 + 4, /p1 counts 4 + 5.
        assert ("app_hits_total", (("path", "/p1"),), 9.0) in first["app_hits"][2]
        assert len(first) == 11
        same_as_collector("read again, nothing changed")
        # Values change and entries are appended to files read before.
        a.step(1)
        b.step(1)
        grown = same_as_collector("values changed and entries appended")
        assert ("app_hits_total", (("path", "/p2"),), 3 + 2 + 1 + 4 + 2 + 1) in grown["app_hits"][2]
        # A process dies (its live gauges go) and a new one starts.
        b.stop()
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead("102", path=str(directory))
        writer(103).step(0)
        same_as_collector("a process died, another started")
        # The files of pid 101 are replaced by another process of that pid
        # whose keys have the same lengths but other labels.
        a.stop()
        for f in directory.glob("*_101.db"):
            f.unlink()
        writer(101, variant="q").step(1)
        replaced = same_as_collector("files replaced under the same names")
        assert ("app_hits_total", (("path", "/q2"),), 3 + 2 + 1) in replaced["app_hits"][2]
        same_as_collector("read again after the replacement")
    finally:
        stop_process(sidecar)
    assert len(scrapes) == 6
