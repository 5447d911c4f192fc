#!/usr/bin/env bash
# Build the libFuzzer targets (clang, ASan+UBSan) and run each from its committed seed corpus
# for a bounded time; any crash, leak or sanitizer report fails the run (libFuzzer exits
# non-zero and leaves the input as crash-*/leak-*/timeout-* in the work directory).
#   bash tests/fuzz/run.sh [seconds per target, default 20] [runs cap, default 5000000]
# New inputs go to a scratch directory; the committed corpus (tests/fuzz/corpus/<target>/,
# written by tests/fuzz/make_corpus.py) is only read.
set -euo pipefail
secs=${1:-20}
runs=${2:-5000000}
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${FF_FUZZ_BUILD:-$root/_build-fuzz}
cmake -S "$root" -B "$build" -DFUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$build" -j2 --target fuzz_accept fuzz_icmp fuzz_gso fuzz_gro >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in fuzz_accept fuzz_icmp fuzz_gso fuzz_gro; do
  mkdir -p "$work/$t"
  if ! (cd "$work" && "$build/$t" -max_total_time="$secs" -runs="$runs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 "$work/$t" "$root/tests/fuzz/corpus/$t" >"$work/$t.log" 2>&1); then
    tail -50 "$work/$t.log"
    mkdir -p "$root/_fuzz-crashes" && cp "$work"/crash-* "$work"/leak-* "$work"/timeout-* \
      "$root/_fuzz-crashes/" 2>/dev/null || true
    echo "fuzz: $t FAILED (inputs kept in _fuzz-crashes/)"
    exit 1
  fi
  echo "fuzz: $t ok: $(grep -E '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}') runs," \
       "$(grep -E '^stat::average_exec_per_sec' "$work/$t.log" | awk '{print $2}') exec/s"
done
