#!/usr/bin/env bash
# Installs the package, runs a demo Gunicorn with the exporter, sends some
# traffic, shows the metrics, and stops. Bounded: about 10 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check .
cd tests/apps
python3 -m gunicorn --workers 2 --bind 127.0.0.1:8000 \
  --worker-class gunicorn_prometheus_exporter.PrometheusWorker wsgi_app:app &
master=$!
trap 'kill -TERM $master 2>/dev/null; wait $master 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:9091/metrics && break; sleep 0.2; done
for i in $(seq 20); do curl -s -o /dev/null http://127.0.0.1:8000/; done
for i in $(seq 5); do curl -s -o /dev/null http://127.0.0.1:8000/status/404; done
curl -s -o /dev/null http://127.0.0.1:8000/raise
echo "--- http://127.0.0.1:9091/metrics (request counters) ---"
curl -s http://127.0.0.1:9091/metrics | grep -E '^gunicorn_worker_(requests|failed_requests)_total'
