#!/usr/bin/env bash
# Installs the package, runs a demo Gunicorn with the exporter, sends some
# traffic, shows the metrics, and stops. About 10 seconds with a wheel of this
# version in dist/ (scripts/build-wheels.sh) or target/wheels/ (tests/run.sh):
# the newest one this machine can install is used. Without one, pip compiles
# the Rust core first (a release build: about 3 to 5 minutes on 2 cores; it
# says so before it starts), which needs a Rust toolchain.
#   PORT=8000 PROMETHEUS_METRICS_PORT=9091 bash examples/demo.sh   # the defaults
#   DEMO_WHEELS="dist target/wheels"                                # where wheels are looked for
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8000}
metrics_port=${PROMETHEUS_METRICS_PORT:-9091}
export PROMETHEUS_METRICS_PORT=$metrics_port
pip=(python3 -m pip install -q --disable-pip-version-check)

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
read -r -a wheel_dirs <<<"${DEMO_WHEELS:-dist target/wheels}"
wheel=""
# Newest first; pip refuses a wheel of another platform (aarch64, musl).
for candidate in $(for d in "${wheel_dirs[@]}"; do
    ls "$d"/gunicorn_prometheus_exporter-"$version"-*.whl 2>/dev/null; done | xargs -r ls -t); do
  if "${pip[@]}" --dry-run --no-deps "$candidate" >/dev/null 2>&1; then
    wheel=$candidate
    break
  fi
done
if [ -n "$wheel" ]; then
  echo "--- installing $wheel"
  "${pip[@]}" --force-reinstall --no-deps "$wheel"
  "${pip[@]}" "$wheel"  # its dependencies (Gunicorn)
else
  echo "--- no wheel of $version in ${wheel_dirs[*]}: building the Rust core from source"
  echo "    (a release build: about 3 to 5 minutes on 2 cores; 'bash scripts/build-wheels.sh'"
  echo "    makes a wheel that later runs install in seconds)"
  if ! command -v cargo >/dev/null; then
    echo "error: building needs a Rust toolchain (https://rustup.rs), or a wheel in dist/" >&2
    exit 1
  fi
  start=$SECONDS
  "${pip[@]}" .
  echo "--- built and installed in $((SECONDS - start)) s"
fi

cd tests/apps
python3 -m gunicorn --workers 2 --bind "127.0.0.1:$port" \
  --worker-class gunicorn_prometheus_exporter.PrometheusWorker wsgi_app:app &
master=$!
trap 'kill -TERM $master 2>/dev/null; wait $master 2>/dev/null' EXIT
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$metrics_port/metrics" && break; sleep 0.2; done
for _ in $(seq 20); do curl -s -o /dev/null "http://127.0.0.1:$port/"; done
for _ in $(seq 5); do curl -s -o /dev/null "http://127.0.0.1:$port/status/404"; done
curl -s -o /dev/null "http://127.0.0.1:$port/raise"
sleep 0.5  # Gunicorn counts a request just after its response is sent
echo "--- http://127.0.0.1:$metrics_port/metrics (request counters) ---"
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^gunicorn_worker_(requests|failed_requests)_total'
