"""The scrape workload of prometheus_client's own files, for benches/scrape.rs.

    write DIR        64 processes' files as prometheus_client's multiprocess
                     mode writes them (its MmapedDict): per process
                     histogram_<pid>.db (200 series of the default 15 buckets
                     and a sum) and counter_<pid>.db (200 series), labels
                     route, method and status, the same label sets in every
                     process, so MultiProcessCollector sums them across pids.
    collect DIR N BODY
                     MultiProcessCollector + generate_latest over DIR, N times:
                     prints the median in ms, and the number of samples; fails
                     unless the samples of the text body in the file BODY
                     (families named app_...) are the same (names, labels,
                     values, as prometheus_client's parser reads them).

Values are multiples of 1/4, so that sums are exact whatever the order the
files are added in (MultiProcessCollector takes them in directory order).
"""

from __future__ import annotations

import os
import sys
import time

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import floatToGoString

PROCESSES = 64
ROUTES = [f"/api/v1/resource{i}/{{id}}" for i in range(25)]
METHODS = ["GET", "POST"]
STATUSES = ["200", "201", "404", "500"]
# prometheus_client's default buckets: 15 with +Inf.
BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0, float("inf"))
HISTOGRAM = "app_request_duration_seconds"
COUNTER = "app_requests"


def label_sets() -> list[tuple[str, str, str]]:
    return [(r, m, s) for r in ROUTES for m in METHODS for s in STATUSES]


def write(directory: str) -> None:
    names = ["method", "route", "status"]
    for p in range(PROCESSES):
        pid = 10_000 + p
        h = MmapedDict(os.path.join(directory, f"histogram_{pid}.db"))
        c = MmapedDict(os.path.join(directory, f"counter_{pid}.db"))
        for n, (route, method, status) in enumerate(label_sets()):
            values = [method, route, status]
            for b, bound in enumerate(BUCKETS):
                key = mmap_key(HISTOGRAM, HISTOGRAM + "_bucket", names + ["le"],
                               values + [floatToGoString(bound)], "Request duration.")
                h.write_value(key, float((p * 7 + n * 3 + b) % 11), 0.0)
            key = mmap_key(HISTOGRAM, HISTOGRAM + "_sum", names, values, "Request duration.")
            h.write_value(key, ((p + n) % 97) * 0.25, 0.0)
            key = mmap_key(COUNTER, COUNTER + "_total", names, values, "Requests.")
            c.write_value(key, float((p * 13 + n) % 101), 0.0)
        h.close()
        c.close()


def app_samples(text: str) -> tuple[list, list]:
    """Families named app_... (name, type, help), and their samples, sorted."""
    from prometheus_client.parser import text_string_to_metric_families

    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("app_")]
    return (sorted((f.name, f.type, f.documentation) for f in families),
            sorted((s.name, sorted(s.labels.items()), s.value) for f in families
                   for s in f.samples))


def collect(directory: str, times: int, ours: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    ms, body = [], b""
    for _ in range(times):
        t = time.perf_counter()
        body = generate_latest(registry)
        ms.append((time.perf_counter() - t) * 1e3)
    theirs = app_samples(body.decode())
    with open(ours, encoding="utf-8") as f:
        mine = app_samples(f.read())
    for ours_, theirs_ in zip(mine, theirs):
        if ours_ != theirs_:
            diff = next(((a, b) for a, b in zip(ours_, theirs_) if a != b),
                        (len(ours_), len(theirs_)))
            sys.exit(f"not what MultiProcessCollector reads (ours, theirs): {diff}")
    print(sorted(ms)[len(ms) // 2], len(theirs[1]))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        collect(sys.argv[2], int(sys.argv[3]), sys.argv[4])
