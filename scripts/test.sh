#!/usr/bin/env bash
# The test command from the README: the C core under ASan+UBSan (ctest), then every pytest suite,
# all with the project's virtual environment (scripts/install-deps.sh makes it; run here first,
# a no-op when nothing changed). Needs root for the namespace tests (they say why when they skip).
set -euo pipefail
source "$(dirname "$0")/env.sh"
bash scripts/install-deps.sh
ff_activate
export FASTFLANNEL_DEV=1          # development build: -Werror and the fast path's test hooks
python3 -m ruff check .          # lint (rules in pyproject.toml)
python3 -m mypy                  # types of agent/, lab/ and the registry fake (pyproject.toml)
if [ -f CMakeLists.txt ]; then
  cmake -S . -B _build-asan -DSANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
  cmake --build _build-asan -j2 >/dev/null
  ctest --test-dir _build-asan --output-on-failure
  bash tests/fuzz/run.sh 20       # libFuzzer targets, bounded (20 s each); a crash fails the run
fi
python3 setup.py -q build_ext --inplace >/dev/null
python3 -m pytest -q -p no:cacheprovider --timeout=600 tests "$@"
