#!/usr/bin/env bash
# The binary wheel as a user gets it, checked end to end (CI runs this after the tests):
#   1. `pip wheel .` from a clean copy of the tree: a plain build (no FASTFLANNEL_DEV: no -Werror,
#      no test hooks), build dependencies from PyPI in pip's isolated build environment;
#   2. `auditwheel repair` -> a manylinux wheel in dist/ (the AVX2 checksum path compiled in, no
#      ISA level required: the CPU is asked at run time);
#   3. a fresh venv (Debian's python3) gets the wheel and its dependencies as binary wheels only,
#      with no compiler reachable;
#   4. from a directory outside the source tree: `fastflannel -version`, the CNI plugin's
#      VERSION, then `fastflannel demo --hosts 2` (namespace hosts, real etcd, daemons and the
#      udp fast path from the installed wheel, TCP across the overlay). Needs root.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ff_need_root "$@"
bash scripts/install-deps.sh
ff_activate
unset FASTFLANNEL_DEV
OUT="$REPO/dist"
work="$(mktemp -d /tmp/ff-wheel.XXXXXX)"
trap 'rm -rf "$work"' EXIT
say() { echo "wheel: $*"; }

# 1. Build from a copy holding the tracked and new files only, so no development object or
# in-place extension can end up in the wheel.
mkdir -p "$work/src" "$work/raw" "$OUT"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$work/src"
else
  tar --exclude-vcs --exclude=./.venv --exclude=./build --exclude='./_build*' --exclude='*.so' \
      --exclude=./dist -cf - . | tar -xf - -C "$work/src"
fi
t0=$(date +%s)
(cd "$work/src" && python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/raw" .)
say "built $(basename "$work"/raw/*.whl) in $(( $(date +%s) - t0 )) s"

# 2. Repair: a manylinux tag, symbols stripped.
rm -f "$OUT"/fastflannel-*.whl
auditwheel repair --strip -w "$OUT" "$work"/raw/*.whl
wheel="$(ls "$OUT"/fastflannel-*manylinux*.whl)"
say "repaired: $(basename "$wheel")"
mkdir "$work/unpacked"
python3 -m zipfile -e "$wheel" "$work/unpacked"
so="$(ls "$work"/unpacked/fastflannel/fastpath/_fastpath*.so)"
ymm="$(objdump -d --no-show-raw-insn "$so" | grep -c '%ymm' || true)"   # no grep -q: SIGPIPE + pipefail
if [ "$ymm" -eq 0 ]; then
  echo "wheel: the AVX2 checksum path is missing from $so" >&2; exit 1
fi
if [ -n "$(find "$work/unpacked" -name '_testing*')" ]; then
  echo "wheel: a development build (test hooks) ended up in the wheel" >&2; exit 1
fi

# 3. A clean environment, binary packages only, no compiler on PATH.
"$BASE_PYTHON" -m venv "$work/venv"
V="$work/venv/bin"
mkdir "$work/run" && cd "$work/run"
env -u PYTHONPATH PATH="$V" CC=/bin/false CXX=/bin/false \
  "$V/python" -m pip install -q --disable-pip-version-check --only-binary=:all: "$wheel"
installed="$("$V/python" -I -c 'import fastflannel.fastpath._fastpath as m; print(m.__file__)')"
case "$installed" in
  "$work/venv/"*) say "extension imported from $installed" ;;
  *) echo "wheel: imported $installed, not the installed wheel" >&2; exit 1 ;;
esac

# 4. Smoke test from outside the tree.
version="$("$V/fastflannel" -version 2>&1)"                 # an assignment: set -e sees failures
say "fastflannel -version: $version"
cni_version="$(CNI_COMMAND=VERSION "$V/fastflannel-cni")"
say "fastflannel-cni VERSION: $cni_version"
case "$cni_version" in *'"supportedVersions"'*) ;; *) echo "wheel: CNI VERSION answered badly" >&2; exit 1 ;; esac
# --observe: h1's `fastflannel status` and /metrics, so prometheus-client (a runtime dependency)
# must have come with the wheel
PATH="$V:/usr/sbin:/usr/bin:/sbin:/bin" "$V/fastflannel" demo --hosts 2 --mbytes 4 --observe
say "ok: $(basename "$wheel") installs without a compiler and runs the daemons and the demo"
