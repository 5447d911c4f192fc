#!/bin/sh
# Build and run the offload tests (test_offload, test_offload_gro, test_offload_tun) under ASan+UBSan, no CMake:
#   tests/csrc/build_offload_tests.sh [fuzz-iterations]      (default 100000)
# Every test exits nonzero on a failed check; test_offload_tun exits 77 when it cannot run.
# Also checks the sources under the extension's flags (setup.py) and runs the benchmark
# (-O2, no sanitizers) when BENCH=1.
set -eu
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/ff_offload_tests}
mkdir -p "$OUT"
SRC="fastpath/csrc/ff_csum.c fastpath/csrc/ff_gso.c fastpath/csrc/ff_gro.c"
for f in $SRC; do
    gcc -O2 -Wall -Wextra -Werror -std=gnu11 -fno-strict-aliasing -Ifastpath/csrc -c "$f" -o "$OUT/$(basename "$f" .c).o"
done
gcc -O1 -g -Wall -Wextra -Werror -std=gnu11 -fsanitize=address,undefined -fno-sanitize-recover=all \
    -fno-omit-frame-pointer -Ifastpath/csrc $SRC tests/csrc/test_offload.c -o "$OUT/test_offload"
"$OUT/test_offload" "${1:-100000}"
gcc -O1 -g -Wall -Wextra -Werror -std=gnu11 -fsanitize=address,undefined -fno-sanitize-recover=all \
    -fno-omit-frame-pointer -Ifastpath/csrc $SRC tests/csrc/test_offload_gro.c -o "$OUT/test_offload_gro"
"$OUT/test_offload_gro"
# Against the real kernel (TUN + netns); exit 77 = skipped (no privilege).
gcc -O1 -g -Wall -Wextra -Werror -std=gnu11 -fsanitize=address,undefined -fno-sanitize-recover=all \
    -fno-omit-frame-pointer -Ifastpath/csrc $SRC tests/csrc/test_offload_tun.c -o "$OUT/test_offload_tun"
rc=0
"$OUT/test_offload_tun" || rc=$?
if [ "$rc" = 77 ]; then echo "test_offload_tun: SKIPPED (needs root)"; elif [ "$rc" != 0 ]; then exit "$rc"; fi
if [ "${BENCH:-0}" = 1 ]; then
    gcc -O2 -Wall -Wextra -Werror -std=gnu11 -Ifastpath/csrc $SRC tests/csrc/bench_offload.c -o "$OUT/bench_offload"
    "$OUT/bench_offload"
fi
