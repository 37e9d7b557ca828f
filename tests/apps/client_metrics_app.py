"""An application that records its own prometheus_client metrics in
multiprocess mode (every gauge mode, a counter, a histogram, a summary)."""

import os

from prometheus_client import Counter, Gauge, Histogram, Summary

HITS = Counter("app_hits", "Hits by path.", ["path"])
LATENCY = Histogram("app_latency_seconds", "Made-up latency.", buckets=(0.25, 0.5, 1.0))
PAYLOAD = Summary("app_payload_bytes", "Made-up payload.")
GAUGES = {
    mode: Gauge(f"app_gauge_{mode}", f"A gauge in mode {mode}.", ["kind"], multiprocess_mode=mode)
    for mode in ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
                 "mostrecent", "livemostrecent")
}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    HITS.labels(path=path).inc()
    n = HITS.labels(path=path)._value.get()
    LATENCY.observe(0.25 * (n % 5))
    PAYLOAD.observe(64)
    for gauge in GAUGES.values():
        gauge.labels(kind="pid").set(os.getpid() % 1000 + n)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
