#!/usr/bin/env bash
# The main job on a local default: install what is needed (scripts/install-deps.sh), then
# `fastflannel demo` from the project's virtual environment (3 namespace hosts, a local etcd,
# containers exchanging traffic across the overlay; all removed afterwards). Needs root.
set -euo pipefail
source "$(dirname "$0")/env.sh"
ff_need_root "$@"
bash scripts/install-deps.sh
ff_activate
export FASTFLANNEL_DEV=1          # the same (development) build the tests use
python3 setup.py -q build_ext --inplace >/dev/null
exec python3 -m fastflannel.agent.cli demo "$@"
