"""A Flask application instrumented by OpenTelemetry's own Flask
instrumentation and Prometheus exporter (stable HTTP semantic conventions),
for comparing with what the exporter writes under PROMETHEUS_METRIC_NAMES=otel.
OpenTelemetry's exposition is served at /otel-metrics (not instrumented)."""

import os

os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http"

from flask import Flask, Response  # noqa: E402
from opentelemetry import metrics  # noqa: E402
from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: E402
from opentelemetry.instrumentation.flask import FlaskInstrumentor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))

app = Flask(__name__)


@app.route("/users/<int:uid>")
def user(uid):
    return f"user {uid}\n"


@app.route("/items/<name>", methods=["GET", "POST"])
def item(name):
    return f"item {name}\n"


@app.route("/fail")
def fail():
    return 1 // 0


@app.route("/otel-metrics")
def otel_metrics():
    # OpenTelemetry's reader registered a collector in prometheus_client's
    # default registry; the exporter's own files are not read here.
    from prometheus_client import REGISTRY

    registry = CollectorRegistry()
    for collector in list(REGISTRY._collector_to_names):
        if type(collector).__module__.startswith("opentelemetry"):
            registry.register(collector)
    return Response(generate_latest(registry), mimetype="text/plain")


FlaskInstrumentor().instrument_app(app, excluded_urls="otel-metrics")
