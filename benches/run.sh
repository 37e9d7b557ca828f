#!/usr/bin/env bash
# One command for the benches: builds this project's wheel, makes the virtual
# environments to compare against, and prints the tables (see README).
#   bash benches/run.sh            # full run
#   ROUNDS=1 DURATION=3 bash benches/run.sh   # quick look
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD/benches
venvs=$here/.venvs
gunicorn_version=${GUNICORN_VERSION:-23.0.0}  # newest release that 0.2.4 runs on
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

python3 -m maturin build --release --quiet --out "$here/.wheels" >/dev/null
wheel=$(ls -t "$here"/.wheels/gunicorn_prometheus_exporter-*.whl | head -n1)

make_venv() {  # name, packages...
  local dir=$venvs/$1; shift
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
}
make_venv this "gunicorn==$gunicorn_version" --force-reinstall --no-deps "$wheel"
make_venv this "gunicorn==$gunicorn_version" prometheus_client
make_venv pypi024 "gunicorn==$gunicorn_version" "gunicorn-prometheus-exporter==0.2.4"

python3 "$here/throughput.py" --this "$venvs/this/bin/python" --pypi024 "$venvs/pypi024/bin/python" \
  --rounds "${ROUNDS:-3}" --duration "${DURATION:-8}"
echo
echo "instrumentation cost per request (ns, Python calls included):" \
  "$("$venvs/this/bin/python" "$here/instrumentation_cost.py")"
echo
PYTHON="$venvs/this/bin/python" cargo bench --quiet --bench scrape
