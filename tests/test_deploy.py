"""The operations kit under deploy/: rules checked and unit-tested by promtool,
Kubernetes manifests consistent, every dashboard query answered by a real
Prometheus scraping real Gunicorn, and totals across two hosts."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import yaml
from conftest import request, request_in_background, wait_for

DEPLOY = Path(__file__).parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True)


def test_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(DEPLOY / "prometheus" / "rules_test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a unit test that expects it to fire.
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])
             if t["exp_alerts"]}
    assert alerts == fired


def test_example_scrape_config_passes_promtool():
    checked = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_kubernetes_scrape_config_keeps_annotated_pods():
    # Debian's promtool is built without Kubernetes discovery, so this config is
    # checked here: its relabelling reads the annotations the manifest sets.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    annotated = yaml.safe_load((DEPLOY / "kubernetes" / "deployment-annotations.yaml").read_text())
    annotations = annotated["spec"]["template"]["metadata"]["annotations"]
    meta = {"__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-z0-9]", "_", k): v
            for k, v in annotations.items()}
    labels = {**meta, "__address__": "10.0.0.7:8000"}
    for rule in job["relabel_configs"]:
        values = ";".join(labels.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), values)
        if rule.get("action") == "keep":
            assert match, rule
        elif match and "target_label" in rule:
            replacement = rule.get("replacement", "$1")
            labels[rule["target_label"]] = re.sub(r"\$(\d)", r"\\\1", replacement)
            labels[rule["target_label"]] = match.expand(labels[rule["target_label"]])
    assert labels["__address__"] == "10.0.0.7:9091"
    assert labels["__metrics_path__"] == "/metrics"


def containers(path: Path) -> list[dict]:
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "Deployment"
    return doc["spec"]["template"]["spec"]["containers"]


def test_readiness_is_probed_on_the_application_port_not_on_metrics():
    # Metrics answer while every worker is stuck: they cannot tell readiness.
    for path in sorted((DEPLOY / "kubernetes").glob("deployment*.yaml")):
        web = containers(path)[0]
        http = {p["name"]: p["containerPort"] for p in web["ports"]}["http"]
        assert f"--bind=0.0.0.0:{http}" in web["command"], path.name
        assert web["readinessProbe"] == {"httpGet": {"path": "/", "port": "http"}}, path.name
        for container in containers(path):
            probes = [container.get(k) for k in ("readinessProbe", "livenessProbe",
                                                 "startupProbe") if k in container]
            assert not [p for p in probes if p["httpGet"]["port"] in ("metrics", 9091)
                        or p["httpGet"]["path"] == "/metrics"], path.name


def test_kubernetes_manifests_agree_on_the_metrics_port():
    podmonitor = yaml.safe_load((DEPLOY / "kubernetes" / "podmonitor.yaml").read_text())
    assert podmonitor["kind"] == "PodMonitor"
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    deployment = containers(DEPLOY / "kubernetes" / "deployment.yaml")[0]
    assert {"name": "metrics", "containerPort": 9091} in deployment["ports"]
    assert "--worker-class=gunicorn_prometheus_exporter.PrometheusWorker" in deployment["command"]
    assert {"name": "PROMETHEUS_BIND_ADDRESS", "value": "0.0.0.0"} in deployment["env"]
    annotated = yaml.safe_load((DEPLOY / "kubernetes" / "deployment-annotations.yaml").read_text())
    annotations = annotated["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9091"


def test_autoscaling_query_is_a_unit_tested_rule():
    scaled = yaml.safe_load((DEPLOY / "kubernetes" / "keda-scaledobject.yaml").read_text())
    assert scaled["kind"] == "ScaledObject"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "web"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yml").read_text())["tests"]
    tested = {t["expr"] for case in tests for t in case.get("promql_expr_test", [])}
    assert trigger["metadata"]["query"] in tested


def test_sidecar_manifest_shares_the_directory():
    web, metrics = containers(DEPLOY / "kubernetes" / "deployment-sidecar.yaml")
    env = {e["name"]: e["value"] for e in web["env"]}
    assert env["PROMETHEUS_METRICS_PORT"] == "0"  # the sidecar serves, not the master
    directory = env["PROMETHEUS_MULTIPROC_DIR"]
    assert metrics["command"][0] == "gunicorn-prometheus-exporter"
    assert f"--multiproc-dir={directory}" in metrics["command"]
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
              for c in (web, metrics)}
    assert mounts["web"] == mounts["metrics"] and directory in mounts["web"].values()


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "gunicorn.json").read_text())


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def concrete(expr: str, window: str | None = None) -> str:
    """A dashboard expression as Grafana would send it, for all jobs and
    instances; with `window`, both of Grafana's windows are that."""
    return (expr.replace("$__rate_interval", window or "30s")
            .replace("$__range", window or "5m")
            .replace("$job", ".*").replace("$instance", ".*"))


def test_dashboard_selects_by_job_then_instance():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["job"]["query"]["query"] == "label_values(gunicorn_workers, job)"
    assert variables["instance"]["query"]["query"] == \
        'label_values(gunicorn_workers{job=~"$job"}, instance)'
    # Every selector of every query is narrowed to the chosen jobs and instances.
    selectors = [m for q in dashboard_queries()
                 for m in re.finditer(r"\b(gunicorn_[a-z_]+)(\{[^}]*\})?", q)]
    assert len(selectors) > 20
    loose = [m.group(0) for m in selectors
             if not m.group(2) or 'job=~"$job",instance=~"$instance"' not in m.group(2)]
    assert not loose, loose


def test_panels_of_counters_born_at_their_first_event_are_unit_tested():
    # Timeouts and failures: a series appears with the value 1. Their panels'
    # queries, at a 10m window, are unit-tested in rules_test.yml.
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yml").read_text())["tests"]
    tested = {t["expr"] for case in tests for t in case.get("promql_expr_test", [])}
    born = [q for q in dashboard_queries()
            if "request_timeouts_total" in q or "failed_requests_total" in q]
    assert len(born) == 2
    assert all(" unless " in q and " offset " in q for q in born), born
    assert not [q for q in born if concrete(q, "10m") not in tested]


def test_every_dashboard_query_returns_data_from_a_real_scrape(gunicorn, prometheus):
    queries = dashboard_queries()
    metrics_used = {m for q in queries for m in re.findall(r"\b(gunicorn_[a-z_]+)", q)}
    g = gunicorn(["--timeout", "2"], workers=2)
    # One request the arbiter aborts: the timeout panels have data.
    slow = request_in_background(g.port, "/sleep/8?route=/slow")
    server = prometheus(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: [{DEPLOY / "prometheus" / "rules.yml"}]
scrape_configs:
  - job_name: web
    static_configs: [{{targets: ["127.0.0.1:{g.metrics_port}"]}}]
""")
    stop = threading.Event()

    def traffic() -> None:
        for i in range(20_000):  # bounded; stopped by the test
            if stop.is_set():
                return
            request(g.port, "GET",
                    ["/?route=/", "/status/404", "/raise", "/sleep/0.01?route=/sleep"][i % 4])

    load = threading.Thread(target=traffic)
    load.start()
    try:
        server.wait_for(lambda: server.query("up") and server.query(
            "rate(gunicorn_worker_requests_total[30s]) > 0"), what="rates")
        time.sleep(3)
        wait_for(lambda: g.scrape().get("gunicorn_worker_request_timeouts_total") == 1,
                 what="the aborted request counted")
        served = {s.name for s in g.scrape().samples}
        assert metrics_used <= served, metrics_used - served  # only metrics that exist
        empty = [q for q in queries if not server.query(concrete(q))]
        assert not empty, empty
        # The one timeout, whose series was born with it, is counted.
        (timeouts,) = [q for q in queries if "request_timeouts_total" in q]
        assert [(r["metric"]["route"], float(r["value"][1]))
                for r in server.query(concrete(timeouts))] == [("/slow", 1.0)]
        def evaluated() -> list:
            groups = server.api("rules")["data"]["groups"]
            rules = [r for grp in groups for r in grp["rules"]]
            return rules if all(r["health"] == "ok" for r in rules) else []

        recorded = [r["name"] for r in server.wait_for(evaluated, what="rules evaluated")
                    if r["type"] == "recording"]
        # Every recording rule evaluates to data on a real scrape.
        assert not [name for name in recorded if not server.query(name)]
    finally:
        stop.set()
        load.join(timeout=30)
        slow.kill()
        slow.wait()


def test_totals_across_two_hosts(gunicorn, prometheus):
    hosts = [gunicorn(workers=2), gunicorn(workers=1)]
    sent = [23, 41]
    for host, n in zip(hosts, sent):
        for i in range(n):
            request(host.port, "GET", "/" if i % 5 else "/status/500")
        host.scrape_idle()
    targets = ", ".join(f'"127.0.0.1:{h.metrics_port}"' for h in hosts)
    server = prometheus(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: web
    static_configs: [{{targets: [{targets}]}}]
""")

    def both():
        result = server.query("sum by (instance) (gunicorn_worker_requests_total)")
        return result if len(result) == 2 else None

    by_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in server.wait_for(both)}
    assert by_instance == {f"127.0.0.1:{h.metrics_port}": n for h, n in zip(hosts, sent)}
    total = server.query("sum(gunicorn_worker_requests_total)")
    assert float(total[0]["value"][1]) == sum(sent)
    errors = server.query('sum(gunicorn_worker_requests_total{status="500"})')
    assert float(errors[0]["value"][1]) == sum(-(-n // 5) for n in sent)
    workers = server.query("sum(gunicorn_workers)")
    assert float(workers[0]["value"][1]) == 3
    # rate() across hosts: one series per host, none negative.
    def rates():
        result = server.query("sum by (instance) (rate(gunicorn_worker_requests_total[10s]))")
        return result if len(result) == 2 else None

    assert all(float(r["value"][1]) >= 0 for r in server.wait_for(rates, what="rates"))
