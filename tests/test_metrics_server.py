"""The metrics server in production: formats, gzip, TLS and basic auth,
hostile clients, the standalone exporter, and a real Prometheus scraping it."""

from __future__ import annotations

import base64
import gzip
import http.client
import os
import random
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest
from conftest import Samples, failed_start, free_port, request, stop_process, wait_for
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
PASSWORD = "correct horse"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-subj", "/CN=test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign")
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")]:
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"), "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                "-out", str(d / f"{name}.pem"), "-extfile", str(d / f"{name}.ext"))
    return d


def web_config(pki: Path, tmp: Path, client_auth: str | None = None) -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    lines = ["tls_server_config:", f"  cert_file: {pki / 'server.pem'}",
             f"  key_file: {pki / 'server.key'}"]
    if client_auth:
        lines += [f"  client_ca_file: {pki / 'ca.pem'}", f"  client_auth_type: {client_auth}"]
    lines += ["basic_auth_users:", f"  prometheus: '{hashed}'"]
    path = tmp / f"web-{client_auth or 'tls'}.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def https_get(port: int, pki: Path, user: str | None = None, password: str | None = None,
              client_cert: bool = False, path: str = "/metrics") -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client_cert:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    headers = {}
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get(port: int, headers: dict[str, str]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics", headers=headers)
    resp = conn.getresponse()
    resp.body = resp.read()
    conn.close()
    return resp


def request_samples(text: str) -> set:
    """The samples that do not move at rest: request counters and histograms."""
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for s in Samples(text).samples
            if s.name.startswith(("gunicorn_worker_request", "gunicorn_worker_failed"))}


def test_content_negotiation_and_gzip(gunicorn):
    g = gunicorn(workers=1)
    for path in ("/", "/status/404", "/raise"):
        request(g.port, "GET", path)
    plain = get(g.metrics_port, {})
    assert plain.status == 200 and plain.getheader("Content-Type") == TEXT
    expected = request_samples(g.scrape_idle().text)
    assert len(expected) > 20
    prometheus_accept = ("application/openmetrics-text;version=1.0.0;q=0.6,"
                         "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
    om = get(g.metrics_port, {"Accept": prometheus_accept})
    assert om.getheader("Content-Type") == OPENMETRICS
    body = om.body.decode()
    assert body.endswith("# EOF\n")
    families = {f.name: f for f in parse_om(body)}  # a strict parser
    assert families["gunicorn_worker_requests"].type == "counter"
    names = {s.name for s in families["gunicorn_worker_requests"].samples}
    assert names == {"gunicorn_worker_requests_total", "gunicorn_worker_requests_created"}
    created = [s.value for s in families["gunicorn_worker_requests"].samples
               if s.name.endswith("_created")]
    assert all(g_start <= time.time() for g_start in created)
    zipped = get(g.metrics_port, {"Accept-Encoding": "gzip"})
    assert zipped.getheader("Content-Encoding") == "gzip"
    assert request_samples(gzip.decompress(zipped.body).decode()) == expected
    text_again = get(g.metrics_port, {"Accept": "text/plain"})
    assert text_again.getheader("Content-Type") == TEXT
    assert request_samples(text_again.body.decode()) == expected


def test_0_2_4_tls_variables_serve_tls_and_the_logged_url_says_https(gunicorn, pki):
    g = gunicorn(workers=1, env={"PROMETHEUS_SSL_CERTFILE": str(pki / "server.pem"),
                                 "PROMETHEUS_SSL_KEYFILE": str(pki / "server.key")},
                 ready=False)
    line = f"serving metrics at https://127.0.0.1:{g.metrics_port}/metrics\n"
    wait_for(lambda: line in g.output(), what="the URL line")
    status, body = https_get(g.metrics_port, pki)
    assert status == 200 and b"gunicorn_exporter_build_info" in body


def test_basic_auth_over_tls(gunicorn, pki, tmp_path):
    g = gunicorn(workers=1, env={"PROMETHEUS_WEB_CONFIG_FILE": str(web_config(pki, tmp_path))},
                 ready=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _ = https_get(g.metrics_port, pki, "prometheus", PASSWORD)
            if status == 200:
                break
        except OSError:
            assert time.monotonic() < deadline, g.output()
            time.sleep(0.2)
    # The URL the master logs says https, as the web config does.
    assert f"serving metrics at https://127.0.0.1:{g.metrics_port}/metrics\n" in g.output()
    assert https_get(g.metrics_port, pki)[0] == 401
    assert https_get(g.metrics_port, pki, "prometheus", "wrong")[0] == 401
    assert https_get(g.metrics_port, pki, "someone", PASSWORD)[0] == 401
    status, body = https_get(g.metrics_port, pki, "prometheus", PASSWORD)
    assert status == 200 and b"gunicorn_exporter_build_info" in body
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        request(g.metrics_port, "GET", "/metrics")  # plain HTTP to a TLS port


def test_client_ca_requires_a_client_certificate(gunicorn, pki, tmp_path):
    config = web_config(pki, tmp_path, "RequireAndVerifyClientCert")
    g = gunicorn(workers=1, env={"PROMETHEUS_WEB_CONFIG_FILE": str(config)}, ready=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _ = https_get(g.metrics_port, pki, "prometheus", PASSWORD, client_cert=True)
            break
        except OSError:
            assert time.monotonic() < deadline, g.output()
            time.sleep(0.2)
    assert status == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(g.metrics_port, pki, "prometheus", PASSWORD)


def test_invalid_web_config_stops_startup(tmp_path):
    bad = tmp_path / "web.yml"
    bad.write_text("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /x.key\n")
    code, errors, stderr = failed_start({"PROMETHEUS_WEB_CONFIG_FILE": str(bad),
                                         "PROMETHEUS_METRICS_PORT": str(free_port())})
    assert code != 0
    assert len(errors) == 1 and "PROMETHEUS_WEB_CONFIG_FILE" in errors[0], stderr


def test_hostile_clients_do_not_stop_scrapes_or_touch_workers(gunicorn):
    g = gunicorn(workers=2)
    for _ in range(10):
        assert request(g.port)[0] == 200
    slow = []
    for _ in range(50):  # slowloris: a request head that never ends
        s = socket.create_connection(("127.0.0.1", g.metrics_port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(s)
    rng = random.Random(1)
    try:
        for i in range(1000):
            with socket.create_connection(("127.0.0.1", g.metrics_port), timeout=5) as s:
                s.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 600))))
                if i % 100 == 0:  # a normal scrape meanwhile answers promptly
                    status, body = request(g.metrics_port, "GET", "/metrics", timeout=5)
                    assert status == 200 and b"gunicorn_worker_requests_total" in body
        for s in slow[:10]:
            s.sendall(b"a")
        status, _ = request(g.metrics_port, "GET", "/metrics", timeout=5)
        assert status == 200
        with socket.create_connection(("127.0.0.1", g.metrics_port), timeout=5) as huge:
            try:  # a request head over the cap is refused
                huge.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100_000 + b"\r\n\r\n")
                answer = huge.recv(100)
            except ConnectionError:
                answer = b""  # the server's close overtook its answer
            assert answer.startswith(b"HTTP/1.1 431") or answer == b""
    finally:
        for s in slow:
            s.close()
    for _ in range(10):
        assert request(g.port)[0] == 200
    m = g.scrape_idle()
    assert m.get("gunicorn_worker_requests_total") == 20
    assert m.get_or("gunicorn_worker_failed_requests_total", 0) == 0  # none recorded


def start_standalone(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(["gunicorn-prometheus-exporter", *args],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, text=True)


def test_standalone_exporter_serves_the_same_samples(gunicorn, tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    for path in ("/", "/status/404", "/raise", "/echo") * 5:
        request(g.port, "GET", path)
    port = free_port()
    sidecar = start_standalone(["--multiproc-dir", str(directory), "--port", str(port)])
    try:
        line = sidecar.stdout.readline()
        assert f"127.0.0.1:{port}" in line, line
        in_master = request_samples(g.scrape_idle().text)
        status, body = request(port, "GET", "/metrics")
        assert status == 200
        assert request_samples(body.decode()) == in_master
        assert len(in_master) > 20
        standalone = Samples(body.decode())
        assert standalone.get("gunicorn_worker_restarts_total") == 0  # the master's own files
        assert standalone.get("gunicorn_workers") == 2
    finally:
        stop_process(sidecar)
    assert sidecar.returncode == 0


def test_standalone_exporter_help_and_errors():
    help_text = subprocess.run(["gunicorn-prometheus-exporter", "--help"], capture_output=True,
                               text=True)
    assert help_text.returncode == 0
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_METRICS_PORT",
                     "PROMETHEUS_BIND_ADDRESS", "PROMETHEUS_WEB_CONFIG_FILE"):
        assert variable in help_text.stdout
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    missing = subprocess.run(["gunicorn-prometheus-exporter", "--multiproc-dir", "/nonexistent"],
                             capture_output=True, text=True, env=env)
    assert missing.returncode == 2
    assert "'/nonexistent' is not a directory" in missing.stderr.splitlines()[-1]
    unset = subprocess.run(["gunicorn-prometheus-exporter"], capture_output=True, text=True,
                           env=env)
    assert unset.returncode == 2 and "is required" in unset.stderr


def test_exporter_keeps_its_port_across_reloads(gunicorn):
    g = gunicorn(workers=2)
    for _ in range(5):
        request(g.port)
    os.kill(g.pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while g.scrape().get("gunicorn_worker_restarts_total", reason="reload") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for _ in range(5):
        request(g.port)
    assert g.scrape_idle().get("gunicorn_worker_requests_total") == 10
    assert "Address already in use" not in g.output()


def test_a_real_prometheus_scrapes_plain_and_https_with_basic_auth(gunicorn, prometheus, pki,
                                                                   tmp_path):
    directory = tmp_path / "multiproc"
    g = gunicorn(env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    sent = 37
    for i in range(sent):
        request(g.port, "GET", "/" if i % 3 else "/status/404")
    g.scrape_idle()
    https_port = free_port()
    sidecar = start_standalone(["--multiproc-dir", str(directory), "--port", str(https_port),
                                "--web-config-file", str(web_config(pki, tmp_path))])
    server = prometheus(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: plain
    static_configs: [{{targets: ["127.0.0.1:{g.metrics_port}"]}}]
  - job_name: https
    scheme: https
    tls_config: {{ca_file: {pki / "ca.pem"}}}
    basic_auth: {{username: prometheus, password: "{PASSWORD}"}}
    static_configs: [{{targets: ["127.0.0.1:{https_port}"]}}]
""")
    try:
        def scraped_both():
            up = {r["metric"]["job"]: r["value"][1] for r in server.query("up")}
            totals = {r["metric"]["job"]: float(r["value"][1]) for r in server.query(
                "sum by (job) (gunicorn_worker_requests_total)")}
            return totals if up == {"plain": "1", "https": "1"} and len(totals) == 2 else None

        totals = server.wait_for(scraped_both, what="both targets up")
        assert totals == {"plain": sent, "https": sent}
    finally:
        stop_process(sidecar)
