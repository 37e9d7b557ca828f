"""PROMETHEUS_METRIC_NAMES=otel: the request duration and the requests in
flight under OpenTelemetry's HTTP semantic conventions, compared with what
OpenTelemetry Python's own Flask instrumentation and Prometheus exporter
write for the same application and the same requests."""

from __future__ import annotations

from collections import Counter

from conftest import Samples, failed_start, request, wait_for

DURATION = "http_server_request_duration_seconds"
LABELS = ("error_type", "http_request_method", "http_response_status_code", "http_route")
# (method, path, status)
SENT = [("GET", "/users/1", 200), ("GET", "/users/2", 200), ("POST", "/items/a", 200),
        ("GET", "/nothing", 404), ("GET", "/fail", 500), ("DELETE", "/users/3", 405),
        ("PROPFIND", "/users/4", 405)]


def counts(m: Samples) -> Counter:
    out: Counter = Counter()
    for s in m.matching(f"{DURATION}_count"):
        out[tuple(s.labels.get(label, "") for label in LABELS)] += s.value
    return out


def bounds(m: Samples) -> set[float]:
    return {float(s.labels["le"]) for s in m.matching(f"{DURATION}_bucket")}


def test_the_duration_and_active_requests_are_opentelemetrys(gunicorn):
    g = gunicorn(env={"PROMETHEUS_METRIC_NAMES": "otel",
                      "PROMETHEUS_EXCLUDE_PATHS": "/otel-metrics"},
                 app="otel_compare_app:app", workers=1)
    for _ in range(3):
        for method, path, status in SENT:
            assert request(g.port, method, path)[0] == status
    # In flight is OpenTelemetry's family here: wait for it to be 0.
    wait_for(lambda: (m := g.scrape()).get_or("gunicorn_worker_requests_total", 0)
             == 3 * len(SENT) and m.get("http_server_active_requests") == 0,
             what="every request counted")
    ours = g.scrape()
    theirs = Samples(request(g.port, "GET", "/otel-metrics")[1].decode())
    assert sum(counts(theirs).values()) == 3 * len(SENT)
    # The same series, counted the same, with OpenTelemetry's label values
    # (the status of a 5xx as error_type, "" for no route).
    assert counts(ours) == counts(theirs)
    assert bounds(ours) == bounds(theirs)
    for s in ours.matching(f"{DURATION}_count"):
        assert set(s.labels) <= set(LABELS)  # no worker_id
    their_labels = {k for s in theirs.matching(f"{DURATION}_count") for k in s.labels}
    assert set(LABELS) <= their_labels
    # Requests in flight: one family, summed across workers.
    (active,) = ours.matching("http_server_active_requests")
    assert active.labels == {} and active.value == 0
    assert theirs.matching("http_server_active_requests")
    assert not ours.matching("gunicorn_worker_requests_in_flight")
    assert not ours.matching("gunicorn_worker_request_duration_seconds_count")


def test_other_metric_names_stop_start_up_naming_the_setting():
    code, errors, _ = failed_start({"PROMETHEUS_METRIC_NAMES": "opentelemetry"})
    assert code != 0 and len(errors) == 1 and "PROMETHEUS_METRIC_NAMES" in errors[0]
