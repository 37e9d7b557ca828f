"""What an operator meets in the first minutes: the metrics URL in Gunicorn's
log, --preload with the default directory, content negotiation as HTTP and
Prometheus 3 do it, and `python -m gunicorn_prometheus_exporter`."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys

import pytest
from conftest import Samples, free_port, private_directories, request, stop_process, wait_for
from metrics_proto import decode_delimited
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

URL_LINE = "[INFO] gunicorn_prometheus_exporter: serving metrics at "
PROTOBUF = ("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; "
            "encoding=delimited")
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# What Prometheus 3 sends by default, and with native histograms (protobuf first).
PROMETHEUS_3 = ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
                "application/openmetrics-text;version=0.0.1;q=0.5,"
                "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
                "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
PROMETHEUS_3_NATIVE = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                       "encoding=delimited;q=0.7," + PROMETHEUS_3)


def url_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if "serving metrics at" in ln]


# --- the metrics URL (the IPv4 line: test_sync_worker.py, on every Gunicorn) -------------

def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_an_ipv6_metrics_address_is_logged_in_brackets(gunicorn):
    g = gunicorn(workers=1, env={"PROMETHEUS_BIND_ADDRESS": "::1"}, ready=False)
    url = f"http://[::1]:{g.metrics_port}/metrics"
    (line,) = wait_for(lambda: url_lines(g.output()), what="the URL line")
    assert line.endswith(URL_LINE + url), line
    conn = http.client.HTTPConnection("::1", g.metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_master_that_does_not_serve_says_where_its_files_are(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(workers=1, env={"PROMETHEUS_METRICS_PORT": "0",
                                 "PROMETHEUS_MULTIPROC_DIR": str(directory)}, ready=False)
    (line,) = wait_for(lambda: [ln for ln in g.output().splitlines() if "not serving" in ln],
                       what="the not-serving line")
    assert line.endswith(f"[{g.pid}] [INFO] gunicorn_prometheus_exporter: not serving metrics "
                         f"(PROMETHEUS_METRICS_PORT=0); serve {directory} with the "
                         "gunicorn-prometheus-exporter command"), line
    assert not url_lines(g.output())


def test_python_m_runs_the_standalone_exporter_and_logs_its_url(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(workers=1, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    for _ in range(3):
        request(g.port)
    g.scrape_idle()
    port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "gunicorn_prometheus_exporter", "--multiproc-dir", str(directory),
         "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        assert sidecar.stdout.readline() == (
            f"gunicorn-prometheus-exporter: serving {directory} at "
            f"http://127.0.0.1:{port}/metrics\n")
        status, body = request(port, "GET", "/metrics")
        assert status == 200
        assert Samples(body.decode()).get("gunicorn_worker_requests_total") == 3
    finally:
        stop_process(sidecar)
    helped = subprocess.run([sys.executable, "-m", "gunicorn_prometheus_exporter", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: gunicorn-prometheus-exporter ")
    assert "--multiproc-dir PROMETHEUS_MULTIPROC_DIR" in helped.stdout


# --- --preload ---------------------------------------------------------------------------

def test_preload_with_a_named_directory_that_does_not_exist_yet(gunicorn, tmp_path):
    # Made and taken before the application is imported: prometheus_client
    # finds it, and what the master wrote at import is not cleared after.
    directory = tmp_path / "named"
    g = gunicorn(["--preload"], env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
                 app="preload_app:app")
    for _ in range(5):
        assert request(g.port)[0] == 200
    m = g.scrape_idle()
    assert m.get("app_orders_total") == 5
    assert m.get("app_imported_by_pid") == g.pid
    assert (directory / f"gauge_max_{g.pid}.db").is_file()


def test_preload_with_gunicorns_env_uses_the_directory_it_names(gunicorn, tmp_path,
                                                                monkeypatch):
    # Gunicorn applies --env after it loaded the worker class, which made a
    # private directory: the one --env names wins, and the other goes.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    tmp, chosen = tmp_path / "tmp", tmp_path / "chosen"
    tmp.mkdir()
    chosen.mkdir()  # prometheus_client, imported by --preload, needs it already
    g = gunicorn(["--preload", "--env", f"PROMETHEUS_MULTIPROC_DIR={chosen}"],
                 env={"TMPDIR": str(tmp)}, app="preload_app:app")
    for _ in range(4):
        assert request(g.port)[0] == 200
    assert g.scrape_idle().get("app_orders_total") == 4
    assert private_directories(tmp) == []
    assert sorted(p.name for p in chosen.glob("counter_*.db"))  # the workers write there


def test_preload_with_the_hooks_alone_warns_that_the_applications_metrics_are_lost(
        gunicorn, tmp_path, monkeypatch):
    # The hooks run after --preload imported the application: nothing can
    # be done but say so, naming the two ways out.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from gunicorn_prometheus_exporter.hooks import when_ready, child_exit\n")
    g = gunicorn(["--config", str(conf), "--preload", "--worker-class", "sync"],
                 app="preload_app:app")
    for _ in range(3):
        assert request(g.port)[0] == 200
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == 3  # Gunicorn's own metrics are fine
    assert not m.matching("app_orders_total")
    (warning,) = [ln for ln in g.output().splitlines()
                  if "prometheus_client was imported before" in ln]
    assert "[WARNING]" in warning
    assert "set PROMETHEUS_MULTIPROC_DIR" in warning
    assert "--worker-class gunicorn_prometheus_exporter.PrometheusWorker" in warning


# --- content negotiation -----------------------------------------------------------------

def scrape(port: int, accept: str) -> tuple[str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept": accept})
        resp = conn.getresponse()
        assert resp.status == 200, resp.status
        return resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def requests_total(families: list) -> float:
    (family,) = [f for f in families if f.name == "gunicorn_worker_requests_total"]
    return sum(m.counter.value for m in family.metric)


@pytest.mark.parametrize("accept", [
    # RFC 9110 allows any parameter value quoted.
    'application/vnd.google.protobuf;proto="io.prometheus.client.MetricFamily";'
    'encoding="delimited";q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2',
    # Optional white space, any case in names, a quoted-pair.
    'Application/Vnd.Google.Protobuf ; Proto="io.prometheus.client.\\MetricFamily" ; '
    'Encoding=delimited ; q=0.7 , text/plain ; q=0.3',
    PROMETHEUS_3_NATIVE,
], ids=["quoted", "spaced-escaped", "prometheus-3-native"])
def test_protobuf_is_served_for_quoted_parameters(gunicorn, accept):
    g = gunicorn(workers=1)
    for _ in range(5):
        request(g.port)
    g.scrape_idle()
    content_type, body = scrape(g.metrics_port, accept)
    assert content_type == PROTOBUF
    assert requests_total(decode_delimited(body)) == 5


def test_prometheus_3_accept_header_gets_openmetrics(gunicorn):
    g = gunicorn(workers=1)
    for path in ("/", "/", "/status/404"):
        request(g.port, "GET", path)
    g.scrape_idle()
    content_type, body = scrape(g.metrics_port, PROMETHEUS_3)
    assert content_type == OPENMETRICS
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_om(text)}  # a strict parser
    by_status = {s.labels["status"]: s.value for s in families["gunicorn_worker_requests"].samples
                 if s.name == "gunicorn_worker_requests_total"}
    assert by_status == {"200": 2, "404": 1}
    # A comma inside a quoted string separates nothing: this is not text/plain at q=1.
    content_type, _ = scrape(g.metrics_port, 'application/openmetrics-text;version=1.0.0;'
                                            'x="a, text/plain;q=1";q=0.5,text/plain;q=0.4')
    assert content_type == OPENMETRICS
