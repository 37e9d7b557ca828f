"""The protobuf exposition and the native histogram of the request duration:
decoded by an independent decoder (tests/metrics_proto.py), merged across
workers, kept when workers die, and read by a real Prometheus."""

from __future__ import annotations

import http.client
import math
import threading
import time

import pytest
from conftest import failed_start, request, wait_for
from metrics_proto import decode_delimited, labels, native_buckets

PROTOBUF = ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
            "encoding=delimited")
# What Prometheus 2.42 sends with --enable-feature=native-histograms.
PROMETHEUS_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                     "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
DURATION = "gunicorn_worker_request_duration_seconds"
COUNTER, GAUGE, HISTOGRAM = 0, 1, 4


def scrape_protobuf(port: int) -> tuple[str, list]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return resp.getheader("Content-Type"), decode_delimited(resp.read())
    finally:
        conn.close()


def family(families: list, name: str):
    found = [f for f in families if f.name == name]
    assert len(found) == 1, f"{name}: {[f.name for f in families]}"
    return found[0]


def durations(families: list, **want: str) -> list:
    """The duration histograms whose labels include `want`."""
    return [m.histogram for m in family(families, DURATION).metric
            if want.items() <= labels(m).items()]


def native_total(h) -> int:
    return h.zero_count + sum(native_buckets(h).values())


def test_protobuf_serves_every_family_with_native_buckets_beside_the_classic_ones(gunicorn):
    g = gunicorn(workers=2)
    for _ in range(6):
        assert request(g.port, "GET", "/sleep/0.05")[0] == 200
    for _ in range(3):
        assert request(g.port, "GET", "/status/404")[0] == 404
    text = g.scrape_idle()
    content_type, families = scrape_protobuf(g.metrics_port)
    assert content_type == PROTOBUF
    # Every family of the text format, under its text name (counters with _total).
    text_families = {line.split()[2] for line in text.text.splitlines()
                     if line.startswith("# TYPE ")}
    assert {f.name for f in families} == text_families
    requests = family(families, "gunicorn_worker_requests_total")
    assert requests.type == COUNTER
    assert sum(m.counter.value for m in requests.metric
               if labels(m)["status"] == "200") == 6
    assert family(families, "gunicorn_workers").type == GAUGE
    assert family(families, "gunicorn_workers").metric[0].gauge.value == 2
    duration = family(families, DURATION)
    assert duration.type == HISTOGRAM
    ok = [m for m in duration.metric if labels(m)["status"] == "200"]
    assert sum(m.histogram.sample_count for m in ok) == 6
    for m in ok:
        h = m.histogram
        # The classic buckets (Prometheus' defaults, +Inf implied by the count)...
        assert [b.upper_bound for b in h.bucket] == [
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
        assert h.bucket[-1].cumulative_count == h.sample_count
        assert text.get(f"{DURATION}_count", **labels(m)) == h.sample_count
        assert text.get(f"{DURATION}_sum", **labels(m)) == pytest.approx(h.sample_sum)
        # ...and the native ones, schema 3, counting the same requests.
        assert h.schema == 3 and h.zero_threshold > 0
        assert native_total(h) == h.sample_count
        for index in native_buckets(h):
            # A 50 ms sleep takes at least 50 ms: every bucket's upper bound is above it.
            assert 2 ** (index / 8) >= 0.05, index
    missing = durations(families, status="404")
    assert sum(native_total(h) for h in missing) == 3


def test_native_buckets_of_dead_workers_live_on_in_the_archive(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(["--max-requests", "3"], env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                 workers=1)
    for _ in range(10):
        assert request(g.port, "GET", "/sleep/0.01")[0] == 200
    g.scrape_settled(directory)

    def settled():
        live = {str(p) for p in g.worker_pids()}
        stale = [f for f in directory.glob("native_worker*.ndb")
                 if f.stem.removeprefix("native_worker") not in live]
        return not stale
    wait_for(settled, 30, "dead workers' native files to be folded")
    assert (directory / "native_archive.ndb").exists()
    _, families = scrape_protobuf(g.metrics_port)
    ok = durations(families, method="GET", status="200")
    assert sum(h.sample_count for h in ok) == 10
    assert sum(native_total(h) for h in ok) == 10


@pytest.mark.parametrize("value", ["9", "-5", "three"])
def test_a_bad_schema_stops_startup_with_one_line(value):
    code, errors, stderr = failed_start({"PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA": value})
    assert code != 0
    assert len(errors) == 1 and "PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA" in errors[0], stderr
    assert "Traceback" not in stderr


def test_the_schema_follows_the_environment(gunicorn):
    g = gunicorn(env={"PROMETHEUS_NATIVE_HISTOGRAM_SCHEMA": "0"}, workers=1)
    for _ in range(3):
        request(g.port, "GET", "/sleep/0.05")
    g.scrape_idle()
    _, families = scrape_protobuf(g.metrics_port)
    (h,) = durations(families, method="GET", status="200")
    assert h.schema == 0
    # Schema 0: (2^-5, 2^-4] = (0.031, 0.0625] is bucket -4 (a slow sleep may land above).
    buckets = native_buckets(h)
    assert sum(buckets.values()) == 3 and min(buckets) == -4, buckets


def test_prometheus_answers_quantiles_from_the_native_histogram(gunicorn, prometheus):
    g = gunicorn(workers=2)
    scrape = f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: gunicorn
    static_configs: [{{targets: ["127.0.0.1:{g.metrics_port}"]}}]
"""
    native = prometheus(scrape, flags=("--enable-feature=native-histograms",))
    classic = prometheus(scrape)
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            request(g.port, "GET", "/sleep/0.05")

    clients = [threading.Thread(target=traffic) for _ in range(2)]
    for c in clients:
        c.start()
    try:
        query = f"histogram_quantile(0.5, sum(rate({DURATION}[30s])))"

        def quantile() -> float | None:
            result = native.query(query)
            if not result or math.isnan(float(result[0]["value"][1])):
                return None
            return float(result[0]["value"][1])
        native.wait_for(quantile, 90, "a quantile of the native histogram")
        # A few more scrapes so the rate covers more than two samples.
        time.sleep(3)
        p50 = quantile()
        m = g.scrape()
        mean = (m.get(f"{DURATION}_sum", method="GET", status="200")
                / m.get(f"{DURATION}_count", method="GET", status="200"))
        # The true median of 50 ms sleeps: their mean, to well under a bucket's width.
        # Schema 3: a bucket spans a factor 2^(1/8); a quantile inside it is off by
        # at most half of that.
        bound = (2 ** (1 / 8) + 1) / 2 - 1
        assert abs(p50 - mean) / mean <= bound, (p50, mean)
        # The classic buckets still answer (Prometheus without native histograms).
        classic_query = (f"histogram_quantile(0.5, sum by (le) "
                         f"(rate({DURATION}_bucket[30s])))")
        p50_classic = classic.wait_for(lambda: classic.query(classic_query), 60,
                                       "a quantile of the classic buckets")
        assert 0.05 <= float(p50_classic[0]["value"][1]) <= 0.075
    finally:
        stop.set()
        for c in clients:
            c.join()
