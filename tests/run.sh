#!/usr/bin/env bash
# Installs what the tests need and runs every test: Rust (fmt, clippy, unit
# tests), Python (ruff, pytest against real Gunicorn, promtool), and the sync
# worker suite again on older Gunicorn releases, each in its own venv.
#   GUNICORN_MATRIX="20.1.0 23.0.0" bash tests/run.sh   # a smaller matrix
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== build"
rm -rf target/wheels
python3 -m maturin build --release --quiet --out target/wheels 2>&1 | grep -v "^[📦🍹🐍🔗📡]" || true
wheel=$(ls target/wheels/gunicorn_prometheus_exporter-*.whl)
python3 -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
python3 -m pip install -q --disable-pip-version-check "$wheel[test]"

echo "== cargo fmt / clippy / test"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --quiet

echo "== ruff"
python3 -m ruff check python tests benches examples

echo "== pytest"
python3 -m pytest -q tests "$@"

for version in ${GUNICORN_MATRIX-20.1.0 21.2.0 22.0.0 23.0.0}; do
  echo "== pytest, sync worker suite, Gunicorn $version"
  venv=target/venvs/gunicorn-$version
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # setuptools: Gunicorn before 22 imports pkg_resources.
  "$venv/bin/pip" install -q --disable-pip-version-check "gunicorn==$version" setuptools \
    prometheus_client pytest
  "$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
  "$venv/bin/python" -m pytest -q tests/test_sync_worker.py
done
