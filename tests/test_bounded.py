"""Bounded by construction: no client, application or restart history grows
series, memory or files. Route templates behind mounts, blueprints and
includes with path parameters; the label cap held per worker slot across
restarts and in the archive; requests past the series table counted on one
overflow series with no memory growth; paths excluded from request series;
request series without worker_id."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from conftest import failed_start, request, wait_for
from prometheus_client.mmap_dict import MmapedDict

PACKAGE = "gunicorn_prometheus_exporter"

# app, worker class, a path under a mount / blueprint / include with a
# parameter of its own (formatted with i), the template it must be counted as
MOUNTED = {
    "fastapi": ("fastapi_app:app", "PrometheusUvicornWorker", "/org/o{i}/r/{i}",
                "/org/{org}/r/{rid}"),
    "flask": ("flask_app:app", "PrometheusWorker", "/org/o{i}/r/{i}",
              "/org/<org>/r/<int:rid>"),
    "django": ("django_app:app", "PrometheusThreadWorker", "/org/o{i}/r/{i}",
               "org/<slug:org>/r/<int:rid>"),
}


def routes_of(m, name: str = "gunicorn_worker_requests_total") -> dict[str, float]:
    out: dict[str, float] = {}
    for s in m.matching(name):
        out[s.labels["route"]] = out.get(s.labels["route"], 0) + s.value
    return out


def counted(g, total: int):
    return wait_for(lambda: (m := g.scrape_idle()).get_or("gunicorn_worker_requests_total", 0)
                    == total and m, 60, f"{total} requests counted")


@pytest.mark.parametrize("framework", list(MOUNTED))
def test_a_mounts_path_parameters_never_become_route_values(gunicorn, framework):
    app, worker, path, template = MOUNTED[framework]
    g = gunicorn(["--worker-class", f"{PACKAGE}.{worker}"], app=app, workers=1)
    sent = 300
    for i in range(sent):
        assert request(g.port, "GET", path.format(i=i))[0] == 200
    m = counted(g, sent)
    assert routes_of(m) == {template: sent}
    assert len(m.matching("gunicorn_worker_requests_total")) == 1
    assert len(m.matching("gunicorn_worker_request_duration_seconds_count")) == 1


def test_the_route_cap_holds_per_worker_slot_across_restarts(gunicorn, tmp_path):
    # Distinct routes the application sets, workers restarting every 40
    # requests: each slot keeps at most the cap, the rest is `other`, in the
    # live files and in the archive alike.
    cap, sent = 5, 600
    directory = tmp_path / "metrics"
    g = gunicorn(["--max-requests", "40"], env={
        "PROMETHEUS_MAX_LABEL_VALUES": str(cap), "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    for i in range(sent):
        assert request(g.port, "GET", f"/?route=/r{i}")[0] == 200
    m = g.scrape_settled(directory)
    assert m.get("gunicorn_worker_requests_total") == sent
    assert m.get("gunicorn_worker_restarts_total", reason="max_requests") >= 10
    for family in ("gunicorn_worker_requests_total",
                   "gunicorn_worker_request_duration_seconds_count"):
        slots: dict[str, set[str]] = {}
        for s in m.matching(family):
            slots.setdefault(s.labels["worker_id"], set()).add(s.labels["route"])
        for worker_id, routes in slots.items():
            assert len(routes - {"other"}) <= cap, (family, worker_id, sorted(routes))
        assert "other" in set().union(*slots.values())
    # The directory's own bound: no more distinct routes in its files.
    routes_in_files = routes_in_counter_files(directory)
    slots_seen = {s.labels["worker_id"] for s in m.matching("gunicorn_worker_requests_total")}
    assert len(routes_in_files - {"other"}) <= cap * len(slots_seen)


def routes_in_counter_files(directory: Path) -> set[str]:
    """Every route value in the directory's counter files. A worker that
    reaches --max-requests just after its last answer may be folded into the
    archive (and its file removed) while this reads: read the directory again."""
    for _ in range(10):
        routes = set()
        try:
            for path in directory.glob("counter_*.db"):
                for key, _, _, _ in MmapedDict.read_all_values_from_file(str(path)):
                    labels = json.loads(key)[2]
                    if "route" in labels:
                        routes.add(labels["route"])
        except FileNotFoundError:
            time.sleep(0.2)
            continue
        return routes
    raise AssertionError("the directory's files kept changing")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_past_the_series_table_a_request_allocates_nothing(gunicorn, tmp_path):
    # The application answers any status and sets any route: (method,
    # status, route) triples make series until the table (4,096) is full; the
    # rest are counted on one overflow series, and the worker's memory and
    # files stay where they were.
    directory = tmp_path / "metrics"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=1)
    (worker,) = g.worker_pids()
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    triples = [(method, status, route) for route in range(10) for status in range(200, 300)
               for method in methods]
    table, extra = 4096, 1200

    def send(batch):
        for method, status, route in batch:
            request(g.port, method, f"/status/{status}?route=/r{route}")

    send(triples[:table + 200])
    files_before = {p.name: p.stat().st_size for p in directory.glob(f"*worker{worker}*")}
    rss_before = rss_kib(worker)
    send(triples[table + 200:table + 200 + extra])
    rss_after = rss_kib(worker)
    files_after = {p.name: p.stat().st_size for p in directory.glob(f"*worker{worker}*")}
    m = counted(g, table + 200 + extra)
    assert m.get("gunicorn_worker_requests_total", method="other", route="other",
                 status="other") == 200 + extra
    assert m.get("gunicorn_worker_label_overflow_total", label="series") == 200 + extra
    assert len(m.matching("gunicorn_worker_requests_total")) == table + 1
    assert files_after == files_before
    # 1,200 requests past the table: a leak of a series each was 6.8 KB a request.
    assert rss_after - rss_before < 1024, (rss_before, rss_after)


def test_excluded_paths_and_marked_requests_are_not_in_request_series(gunicorn):
    g = gunicorn(env={"PROMETHEUS_EXCLUDE_PATHS": "/status/204, /sleep/*"}, workers=1)
    for _ in range(5):
        assert request(g.port, "GET", "/status/204")[0] == 204
        assert request(g.port, "GET", "/sleep/0")[0] == 200
        assert request(g.port, "GET", "/?exclude=1")[0] == 200
        assert request(g.port, "GET", "/status/201")[0] == 201
    m = counted(g, 5)
    assert {s.labels["status"] for s in m.matching("gunicorn_worker_requests_total")} == {"201"}
    assert m.get("gunicorn_worker_request_duration_seconds_count") == 5
    # The worker was busy with them all the same.
    assert m.get("gunicorn_worker_busy_seconds_total") > 0


def test_request_series_without_worker_id_are_summed_across_workers(gunicorn):
    g = gunicorn(env={"PROMETHEUS_WORKER_ID_LABEL": "false"}, workers=3)
    for _ in range(30):
        assert request(g.port, "GET", "/status/202")[0] == 202
    m = counted(g, 30)
    for family in ("gunicorn_worker_requests_total",
                   "gunicorn_worker_request_duration_seconds_count",
                   "gunicorn_worker_request_size_bytes_count",
                   "gunicorn_worker_response_size_bytes_count",
                   "gunicorn_worker_request_queue_seconds_count"):
        samples = m.matching(family)
        assert samples and all("worker_id" not in s.labels for s in samples), family
    assert len(m.matching("gunicorn_worker_requests_total")) == 1
    # Resource and lifecycle families keep it.
    ids = {s.labels["worker_id"] for s in m.matching("gunicorn_worker_memory_bytes")}
    assert ids == {"1", "2", "3"}
    assert len(m.matching("gunicorn_worker_busy_seconds_total")) == 3


def test_a_bad_worker_id_label_setting_stops_start_up_naming_it():
    code, errors, _ = failed_start({"PROMETHEUS_WORKER_ID_LABEL": "sometimes"})
    assert code != 0 and len(errors) == 1 and "PROMETHEUS_WORKER_ID_LABEL" in errors[0]


def test_slow_scrapers_share_one_rendered_body(gunicorn, tmp_path):
    # A big directory (an application's own series: a body of ~6 MB, more
    # than the kernel's socket buffers take), then 40 scrapes whose clients
    # never read: they share the body of a render instead of a copy each.
    directory = tmp_path / "metrics"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}, workers=1)
    big = MmapedDict(str(directory / f"counter_{os.getpid()}.db"))
    for i in range(150_000):
        key = json.dumps(["app_items", "app_items_total", {"item": f"item-{i:06d}"}, "Items."],
                         sort_keys=True)
        big.write_value(key, float(i), 0.0)
    big.close()
    body = len(g.scrape_text())
    assert body > 5_000_000
    for _ in range(12):  # the scrape's own buffers and caches reach their size
        g.scrape_text()
    before = rss_kib(g.pid)
    slow = []
    try:
        for _ in range(40):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", g.metrics_port))
            slow.append(s)
        for s in slow:  # the requests in one burst
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # Every one of them is answered (their first bytes arrive) ...
        for s in slow:
            s.settimeout(30)
            assert s.recv(16).startswith(b"HTTP/1.1 200")
        grown = rss_kib(g.pid) - before
    finally:
        for s in slow:
            s.close()
    # ... with a few bodies alive (one for each render the burst of requests
    # spanned, more on a busy machine), not one per client: that was 40
    # bodies, 330 MB.
    assert grown * 1024 < 10 * body, (grown, body)
    assert g.scrape().get("app_items_total") == sum(range(150_000))
