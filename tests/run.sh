#!/usr/bin/env bash
# Installs what the tests need and runs every test: Rust (fmt, clippy, unit
# tests) and Python (ruff, pytest against real Gunicorn, promtool).
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

python3 -m pip install -q --disable-pip-version-check ".[test]"

echo "== cargo fmt / clippy / test"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --quiet

echo "== ruff"
python3 -m ruff check python tests benches examples

echo "== pytest"
python3 -m pytest -q tests "$@"
