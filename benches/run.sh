#!/usr/bin/env bash
# One command for the benches: builds this project's wheel, makes the
# virtual environments to compare against (Gunicorn 23.0.0 in both, the newest
# release that 0.2.4 runs on), and runs benches/suite.py: one table, plus
# benches/results.json and benches/chart.png.
#   ROUNDS=6 DURATION=1 bash benches/run.sh   # a quicker, noisier run
#   ONLY=request_cost,gthread bash benches/run.sh   # these parts again, the
#                                   # others kept from benches/results.json
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD/benches
venvs=$here/.venvs
gunicorn_version=${GUNICORN_VERSION:-23.0.0}
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m maturin build --release --quiet --out "$here/.wheels" >/dev/null 2>&1
wheel=$(ls -t "$here"/.wheels/gunicorn_prometheus_exporter-*.whl | head -n1)

make_venv() {  # name, packages...
  local dir=$venvs/$1; shift
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
}
make_venv this "gunicorn==$gunicorn_version" prometheus_client matplotlib
make_venv this --force-reinstall --no-deps "$wheel"
make_venv pypi024 "gunicorn==$gunicorn_version" "gunicorn-prometheus-exporter==0.2.4"

"$venvs/this/bin/python" "$here/suite.py" --this "$venvs/this/bin/python" \
  --pypi024 "$venvs/pypi024/bin/python" --rounds "${ROUNDS:-30}" --duration "${DURATION:-1}" \
  ${ONLY:+--only "$ONLY"}
