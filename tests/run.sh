#!/usr/bin/env bash
# Installs what the tests need and runs every test. It builds the manylinux2014
# x86_64 and aarch64 wheels once (scripts/build-wheels.sh) and uses the x86_64
# wheel everywhere:
#   - Rust: fmt, clippy, unit tests; ruff;
#   - the whole pytest suite on the newest Gunicorn, including tests/test_wheel.py
#     (the wheel in clean CPython 3.9 and 3.13 venvs with no Rust on PATH) and
#     tests/test_aarch64.py (the aarch64 wheel under qemu-user, with Debian's
#     arm64 CPython from a root made by tests/arm64-root.sh, kept in target/);
#   - the sync and gthread worker suites on every Gunicorn minor line from 20.1
#     to the newest, spread over CPython 3.9 to 3.13 (pyenv's; a missing CPython
#     is reported and skipped).
# Venvs are kept under target/venvs. Per-stage times are printed at the end.
#   MATRIX="20.1.0:3.9 27.0.1:3.13" bash tests/run.sh   # a smaller matrix
#   bash tests/run.sh -k exact                          # arguments go to the full pytest run
set -euo pipefail
cd "$(dirname "$0")/.."

GUNICORN_NEWEST=27.0.1
# Gunicorn:CPython for the sync + gthread suites: every minor line once, each
# CPython at least once. A CPython runs on the first Gunicorn released after it
# (20.1 on 3.9, 21.2 on 3.10, 22.0 on 3.12, 24.1 on 3.13) and 3.9 and 3.13 on
# the newest that supports them (23.0: Gunicorn 24 needs 3.10; 27.0); 3.11 runs
# everything on the newest Gunicorn too.
MATRIX=${MATRIX-20.1.0:3.9 21.2.0:3.10 22.0.0:3.12 23.0.0:3.9 24.1.1:3.13 25.3.0:3.11 26.2.0:3.12 27.0.1:3.13}
PIP=(-m pip install -q --disable-pip-version-check)

timings=()
stage_name=""
stage() {
  if [ -n "$stage_name" ]; then
    timings+=("$(printf '%6ds  %s' $((SECONDS - stage_start)) "$stage_name")")
  fi
  stage_name=$1
  stage_start=$SECONDS
  [ -z "$1" ] || echo "== $1"
}
failed=()
report() {
  local rc=$?
  stage ""
  echo "== stage times (total $((SECONDS))s)"
  printf '%s\n' "${timings[@]}"
  if [ ${#failed[@]} -gt 0 ]; then
    echo "== failed:"
    printf '   %s\n' "${failed[@]}"
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit $rc
}
trap report EXIT

# pytest in a venv, as if activated (tests run its console scripts), where
# exit code 5 (no test collected) is a failure too.
run_pytest() {
  local python=$1 bin
  shift
  bin=$(cd "$(dirname "$python")" && pwd)
  local rc=0
  PATH="$bin:$PATH" VIRTUAL_ENV=$(dirname "$bin") "$python" -m pytest -q -p no:cacheprovider "$@" \
    || rc=$?
  [ "$rc" -ne 5 ] || echo "pytest collected no test: $*" >&2
  return "$rc"
}

# A venv under target/venvs, made once from the given interpreter.
venv() {
  local dir=target/venvs/$1 base=$2
  [ -x "$dir/bin/python" ] || "$base" -m venv --clear "$dir"
  echo "$dir/bin/python"
}

# CPython X.Y: pyenv's newest X.Y.*, else pythonX.Y on PATH (CI's setup-python).
find_python() {
  local root=${PYENV_ROOT:-$HOME/.pyenv} found=""
  found=$(ls -d "$root"/versions/"$1".[0-9]*/bin/python 2>/dev/null | sort -V | tail -n 1) || true
  [ -n "$found" ] || found=$(command -v "python$1") || true
  echo "$found"
}

stage "system packages"
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v wrk >/dev/null || missing+=(wrk)
# The tests start the arm64 interpreter through qemu-aarch64-static directly.
# The package registers binfmt handlers only through binfmt-support (a
# recommendation, so not installed) or a systemd booted as init (not here).
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Built and checked (auditwheel) by scripts/build-wheels.sh, as users' wheels
# are; each into a directory of its own, which the script empties first.
stage "build the manylinux2014 x86_64 wheel"
TARGETS=x86_64-unknown-linux-gnu SDIST=0 OUT=target/wheels bash scripts/build-wheels.sh
wheel=$(ls "$PWD"/target/wheels/gunicorn_prometheus_exporter-*manylinux_2_17_x86_64.whl)
export GPE_WHEEL=$wheel
echo "$wheel"

stage "build the manylinux2014 aarch64 wheel"
TARGETS=aarch64-unknown-linux-gnu SDIST=0 OUT=target/wheels-aarch64 bash scripts/build-wheels.sh
GPE_WHEEL_AARCH64=$(ls "$PWD"/target/wheels-aarch64/gunicorn_prometheus_exporter-*manylinux_2_17_aarch64.whl)
export GPE_WHEEL_AARCH64
echo "$GPE_WHEEL_AARCH64"

stage "arm64 root for qemu-user (made once, in target/arm64-root)"
export GPE_ARM64_ROOT=$PWD/target/arm64-root
bash tests/arm64-root.sh "$GPE_ARM64_ROOT"

stage "install: Gunicorn $GUNICORN_NEWEST, CPython $(python3 -c 'import platform; print(platform.python_version())')"
main=$(venv "main-gunicorn-$GUNICORN_NEWEST" python3)
# The test tools are pyproject.toml's `test` dependency group (pip 25.1+ reads it).
"$main" "${PIP[@]}" "pip>=25.1"
"$main" "${PIP[@]}" "gunicorn==$GUNICORN_NEWEST" "$wheel" --group test
"$main" "${PIP[@]}" --force-reinstall --no-deps "$wheel"

stage "cargo fmt / clippy / test"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The interop tests run Python with prometheus_client: the test venv's.
PYTHON="$PWD/$main" cargo test --quiet

stage "ruff, stubtest"
"$main" -m ruff check python tests benches examples
# _core.pyi must say what the compiled module really has.
(cd target && "../$main" -m mypy.stubtest gunicorn_prometheus_exporter._core)

stage "pytest: everything, Gunicorn $GUNICORN_NEWEST"
# A failing pytest stage does not stop the others; the command fails at the end.
run_pytest "$main" tests "$@" || failed+=("$stage_name")

for pair in $MATRIX; do
  gunicorn=${pair%%:*}
  python=${pair##*:}
  stage "pytest: sync + gthread suites, Gunicorn $gunicorn, CPython $python"
  base=$(find_python "$python")
  if [ -z "$base" ]; then
    echo "skipped: CPython $python not found"
    continue
  fi
  py=$(venv "gunicorn-$gunicorn-py$python" "$base")
  # setuptools before 81: Gunicorn before 22 imports pkg_resources.
  "$py" "${PIP[@]}" "gunicorn==$gunicorn" "setuptools<81" prometheus_client pytest
  "$py" "${PIP[@]}" --force-reinstall --no-deps "$wheel"
  run_pytest "$py" tests/test_sync_worker.py tests/test_thread_worker.py || failed+=("$stage_name")
done
