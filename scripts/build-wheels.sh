#!/usr/bin/env bash
# Builds what users install, into dist/:
#   manylinux2014 x86_64, manylinux2014 aarch64 and musllinux_1_2 x86_64 wheels
#   (one abi3 wheel each, CPython 3.9+), cross-built with maturin --zig, and the sdist.
# Then checks every archive: `auditwheel show` must find each wheel consistent
# with the platform tag in its name, and each wheel and the sdist must carry LICENSE.
# Installs what it needs (maturin, ziglang, auditwheel in target/venvs/build;
# the Rust targets with rustup); running it again reuses them.
#   TARGETS="x86_64-unknown-linux-gnu" bash scripts/build-wheels.sh   # a subset
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust target, maturin --compatibility, the platform tag auditwheel must report.
BUILDS=(
  "x86_64-unknown-linux-gnu manylinux2014 manylinux_2_17_x86_64"
  "aarch64-unknown-linux-gnu manylinux2014 manylinux_2_17_aarch64"
  "x86_64-unknown-linux-musl musllinux_1_2 musllinux_1_2_x86_64"
)
TARGETS=${TARGETS-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-unknown-linux-musl}

started=$SECONDS
venv=target/venvs/build
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.9.4,<2" ziglang auditwheel
export PATH="$PWD/$venv/bin:$PATH"  # maturin finds zig as `python3 -m ziglang`

installed=$(rustup target list --installed)
for target in $TARGETS; do
  grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

rm -rf dist
mkdir -p dist
fail() { echo "build-wheels: $*" >&2; exit 1; }

for build in "${BUILDS[@]}"; do
  read -r target compat tag <<<"$build"
  [[ " $TARGETS " == *" $target "* ]] || continue
  echo "== wheel $compat $target"
  t0=$SECONDS
  maturin build --release --zig --compatibility "$compat" --target "$target" --out dist
  wheel=$(ls dist/*"$tag"*.whl 2>/dev/null) || fail "no wheel tagged $tag in dist/"
  shown=$(auditwheel show "$wheel")
  echo "$shown"
  # auditwheel wraps its lines: compare with the whitespace folded.
  grep -q "consistent with the following platform tag: \"$tag\"" <<<"$(echo $shown)" \
    || fail "auditwheel does not agree that $wheel is $tag"
  python3 -m zipfile -l "$wheel" | grep -q '\.dist-info/licenses/LICENSE ' \
    || fail "$wheel has no LICENSE"
  echo "   $(du -k "$wheel" | cut -f1) KiB, $((SECONDS - t0)) s"
done

echo "== sdist"
maturin sdist --out dist
sdist=$(ls dist/*.tar.gz)
tar -tzf "$sdist" | grep -qE '^[^/]+/LICENSE$' || fail "$sdist has no LICENSE"

echo "== dist/ ($((SECONDS - started)) s)"
ls -l dist
