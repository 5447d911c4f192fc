#!/usr/bin/env bash
# The main job on a local default: install what is needed, then `fastflannel demo` (3 namespace
# hosts, a local etcd, containers exchanging traffic across the overlay; all removed afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
python3 setup.py -q build_ext --inplace >/dev/null
exec python3 -m fastflannel.agent.cli demo "$@"
