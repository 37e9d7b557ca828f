#!/usr/bin/env bash
# Makes a Debian arm64 root holding CPython, for running the aarch64 wheel
# under qemu-user (tests/test_aarch64.py):
#   QEMU_LD_PREFIX=ROOT qemu-aarch64-static ROOT/usr/bin/python3 ...
# debootstrap downloads python3 and what it needs for arm64 (the host's Debian
# release, from the mirror apt uses, checked against Debian's keyring), and
# each package is unpacked with dpkg-deb -x: nothing runs inside the root (no
# chroot, no second stage, no maintainer scripts), and no binfmt handler is
# registered on the machine. A root made once is kept: delete it to make it
# again (from the release's current packages).
#   bash tests/arm64-root.sh target/arm64-root
set -euo pipefail
root=${1:?usage: tests/arm64-root.sh ROOT}

if [ -x "$root/usr/bin/python3" ]; then
  echo "$root: made before, kept"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "arm64-root: debootstrap not found" >&2; exit 1; }

suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
mirror_of_suite() {
  apt-get indextargets --format '$(REPO_URI)' "Release: $suite" 'Target-Of: deb' \
    'Identifier: Packages' | sed -n 1p
}
mirror=$(mirror_of_suite)
if [ -z "$mirror" ]; then
  # apt lists a source only once it has fetched the source's package lists.
  apt-get update -qq
  mirror=$(mirror_of_suite)
fi
if [ -z "$suite" ] || [ -z "$mirror" ]; then
  echo "arm64-root: no Debian mirror for '$suite' in apt's sources" >&2
  exit 1
fi

# Made beside the root and renamed into place: an interrupted run leaves no
# root that looks complete.
work="$root.partial"
rm -rf "$work"
mkdir -p "$work"
options=(--arch=arm64 --download-only --variant=minbase --include=python3 --force-check-gpg)
echo "debootstrap ${options[*]} $suite $mirror"
debootstrap "${options[@]}" "$suite" "$work" "$mirror" >"$work.log" 2>&1 \
  || { cat "$work.log" >&2; exit 1; }
debs=("$work"/var/cache/apt/archives/*.deb)
for deb in "${debs[@]}"; do
  dpkg-deb -x "$deb" "$work"
done
rm -rf "$work"/var/cache/apt/archives/*.deb "$work/debootstrap" "$work.log"
[ -x "$work/usr/bin/python3" ] || { echo "arm64-root: no usr/bin/python3 in $work" >&2; exit 1; }
rm -rf "$root"
mv "$work" "$root"
echo "$root: ${#debs[@]} packages, $(du -sm "$root" | cut -f1) MB"
