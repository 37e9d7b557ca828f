"""Exemplars from W3C `traceparent` headers (or, without one, from the
current OpenTelemetry span): on the duration bucket a request fell in and on
the failed-requests counter, in OpenMetrics and protobuf, kept per worker, and
stored by a real Prometheus."""

from __future__ import annotations

import http.client
import threading
import time

import pytest
from conftest import wait_for
from metrics_proto import decode_delimited, labels
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from test_native_histograms import PROMETHEUS_ACCEPT

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
DURATION = "gunicorn_worker_request_duration_seconds"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
FAILED_TRACE = "0af7651916cd43dd8448eb211c80319c"
FAILED_SPAN = "b7ad6b7169203331"


def traced(port: int, path: str, traceparent: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"traceparent": traceparent} if traceparent else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def scrape(port: int, accept: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept": accept})
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


def exemplars(text: str) -> dict[tuple[str, str], object]:
    """(sample name, le or error_type) -> exemplar, for samples that have one."""
    out = {}
    for family in parse_om(text):
        for s in family.samples:
            if s.exemplar is not None:
                out[(s.name, s.labels.get("le") or s.labels.get("error_type"))] = s.exemplar
    return out


def test_traceparent_becomes_the_exemplar_of_its_bucket_and_of_the_failure(gunicorn):
    g = gunicorn(workers=1)
    assert traced(g.port, "/sleep/0.05", f"00-{TRACE}-{SPAN}-01") == 200
    assert traced(g.port, "/raise", f"00-{FAILED_TRACE}-{FAILED_SPAN}-00") == 500
    # Ignored: all-zero trace id, unknown version, upper case, no header at all.
    for bad in [f"00-{'0' * 32}-{SPAN}-01", f"01-{TRACE}-{SPAN}-01",
                f"00-{TRACE.upper()}-{SPAN}-01", None]:
        assert traced(g.port, "/", bad) == 200
    g.scrape_idle()
    found = exemplars(scrape(g.metrics_port, OPENMETRICS).decode())
    # 50 ms sleeps land in (0.05, 0.075].
    e = found[(f"{DURATION}_bucket", "0.075")]
    assert e.labels == {"trace_id": TRACE, "span_id": SPAN}
    assert 0.05 <= e.value <= 0.075
    assert abs(float(e.timestamp) - time.time()) < 60
    failed = found[("gunicorn_worker_failed_requests_total", "AppFailure")]
    assert failed.labels == {"trace_id": FAILED_TRACE, "span_id": FAILED_SPAN}
    assert failed.value == 1
    # Untraced and badly traced requests leave none.
    assert {v.labels["trace_id"] for v in found.values()} == {TRACE, FAILED_TRACE}
    # Protobuf carries the same exemplars.
    families = {f.name: f for f in decode_delimited(scrape(g.metrics_port, PROMETHEUS_ACCEPT))}
    proto = [b.exemplar for m in families[DURATION].metric for b in m.histogram.bucket
             if b.HasField("exemplar")]
    assert TRACE in {labels(e)["trace_id"] for e in proto}
    assert {labels(e)["trace_id"] for e in proto} <= {TRACE, FAILED_TRACE}
    (counter,) = [m.counter for m in families["gunicorn_worker_failed_requests_total"].metric]
    assert labels(counter.exemplar) == {"trace_id": FAILED_TRACE, "span_id": FAILED_SPAN}


def test_the_latest_exemplar_wins_and_survives_its_worker(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(["--max-requests", "2"], env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                 workers=1)
    for i in range(1, 6):
        assert traced(g.port, "/", f"00-{i:032x}-{i:016x}-01") == 200
    g.scrape_settled(directory)
    # The latest traced request's exemplar, though the worker that served it is gone.
    wait_for(lambda: (directory / "exemplar_archive.ndb").exists(), 30, "an exemplar archive")
    found = exemplars(scrape(g.metrics_port, OPENMETRICS).decode())
    # Fast requests share a bucket (a slow one may land in the next).
    latest = max(found.values(), key=lambda e: float(e.timestamp))
    assert latest.labels["trace_id"] == f"{5:032x}"
    assert {e.labels["trace_id"] for e in found.values()} <= {f"{i:032x}" for i in range(1, 6)}
    assert len(found) < 5


def test_prometheus_stores_the_exemplars(gunicorn, prometheus):
    g = gunicorn(workers=1)
    server = prometheus(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: gunicorn
    static_configs: [{{targets: ["127.0.0.1:{g.metrics_port}"]}}]
""", flags=("--enable-feature=exemplar-storage",))
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            traced(g.port, "/sleep/0.05", f"00-{TRACE}-{SPAN}-01")
            time.sleep(0.2)

    client = threading.Thread(target=traffic)
    client.start()
    try:
        def stored():
            now = time.time()
            body = server.api("query_exemplars", query=f"{DURATION}_bucket",
                              start=str(now - 600), end=str(now + 60))
            return [e for series in body.get("data") or [] for e in series["exemplars"]]
        found = server.wait_for(stored, 60, "exemplars in Prometheus")
        assert {e["labels"]["trace_id"] for e in found} == {TRACE}
        assert all(0.05 <= float(e["value"]) <= 0.075 for e in found)
    finally:
        stop.set()
        client.join()


# worker class and application of the OpenTelemetry tests (tests/apps/otel_app.py)
TRACED_APPS = {
    "sync": ("PrometheusWorker", "otel_app:app"),
    "gthread": ("PrometheusThreadWorker", "otel_app:app"),
    "asgi": ("PrometheusASGIWorker", "otel_app:asgi_app"),
    "uvicorn": ("PrometheusUvicornWorker", "otel_app:asgi_app"),
}


def start_traced(gunicorn, kind: str):
    worker, app = TRACED_APPS[kind]
    return gunicorn(["--worker-class", f"gunicorn_prometheus_exporter.{worker}"], app=app,
                    workers=1)


def spanned(port: int, path: str, traceparent: str | None = None) -> tuple[str, str]:
    """GET `path` of otel_app: the (trace_id, span_id) of the span it answered in."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"traceparent": traceparent} if traceparent else {})
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
    finally:
        conn.close()
    trace_id, span_id = body.split("-")
    return trace_id, span_id


@pytest.mark.parametrize("kind", list(TRACED_APPS))
def test_the_current_opentelemetry_span_is_the_exemplar_of_an_untraced_request(gunicorn, kind):
    g = start_traced(gunicorn, kind)
    trace_id, span_id = spanned(g.port, "/sleep/0.05")
    unsampled, _ = spanned(g.port, "/unsampled")
    g.scrape_idle()
    found = exemplars(scrape(g.metrics_port, OPENMETRICS).decode())
    e = found[(f"{DURATION}_bucket", "0.075")]
    assert e.labels == {"trace_id": trace_id, "span_id": span_id}
    assert 0.05 <= e.value <= 0.075
    # The unsampled span's trace is recorded nowhere: it leaves no exemplar.
    assert {v.labels["trace_id"] for v in found.values()} == {trace_id}
    assert unsampled != trace_id


@pytest.mark.parametrize("kind", ["sync", "uvicorn"])
def test_a_traceparent_header_wins_over_the_current_span(gunicorn, kind):
    g = start_traced(gunicorn, kind)
    # The application does not continue the caller's trace: its span has a trace of its own.
    span_trace, _ = spanned(g.port, "/sleep/0.05", f"00-{TRACE}-{SPAN}-01")
    assert span_trace != TRACE
    g.scrape_idle()
    found = exemplars(scrape(g.metrics_port, OPENMETRICS).decode())
    assert found[(f"{DURATION}_bucket", "0.075")].labels == {"trace_id": TRACE, "span_id": SPAN}
    assert {v.labels["trace_id"] for v in found.values()} == {TRACE}
