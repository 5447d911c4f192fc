#!/usr/bin/env bash
# The test command from the README: the C core under ASan+UBSan (ctest), then every pytest suite.
# Needs root for the namespace tests (they say why when they skip). Run install-deps.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
export FASTFLANNEL_DEV=1   # a development build: -Werror, the test hooks (fastflannel.fastpath._testing)
if [ -f CMakeLists.txt ]; then
  cmake -S . -B _build-asan -DSANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
  cmake --build _build-asan -j2 >/dev/null
  ctest --test-dir _build-asan --output-on-failure
fi
python3 setup.py -q build_ext --inplace >/dev/null
python3 -m pytest -q -p no:cacheprovider --timeout=600 tests "$@"
