#!/usr/bin/env bash
# Everything fastflannel needs on a fresh Debian machine: system tools, a real etcd, the Python
# build and test dependencies, and fastflannel itself (editable, so the tests import this tree).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
APT_PKGS="iproute2 iputils-ping etcd-server etcd-client iperf3 tcpdump iptables ethtool cmake gcc make procps"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check \
  "setuptools>=64" wheel "Cython>=3.0" "numpy>=1.24" "pyroute2>=0.7" "python3-etcd3>=0.13" \
  "pytest>=7" "pytest-benchmark>=4" pytest-timeout hypothesis matplotlib
python3 -m pip install -q --disable-pip-version-check --no-build-isolation -e .
