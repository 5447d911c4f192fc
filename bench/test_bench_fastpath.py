"""Micro-benchmarks of the C fast path (they report; they do not gate).

    python3 -m pytest bench/test_bench_fastpath.py --benchmark-enable -s

The loops run in C without the GIL (RouteTable.bench_lookup, bench_transform: the hooks of a
development build, fastflannel.fastpath._testing), so Python call overhead is paid once per N
operations; the ns figures printed come from a monotonic clock around the C loop alone. Target
(docs/fastpath.md §"Measured"): <= 20 ns per lookup with 10k routes.
"""
from __future__ import annotations

import os
import struct
import sys

import numpy as np
import pytest

from fastflannel.fastpath import _testing as hooks

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from support import reference as ref  # noqa: E402

N_ROUTES = 10_000
N_OPS = 2_000_000          # lookups per timed call


def _table(lengths=(20,)) -> hooks.RouteTable:
    t = hooks.RouteTable()
    for i in range(N_ROUTES):
        prefix = lengths[i % len(lengths)]
        t.insert(0x0A000000 + (i << 12), prefix, 0xC0000200 + i % 250, 8285)
    return t


def _dsts(hit: bool, n: int = 4096) -> np.ndarray:
    rng = np.random.default_rng(1)
    base = 0x0A000000 if hit else 0x20000000      # routes span 10.0.0.0-12.112.255.255
    return (base + (rng.integers(0, N_ROUTES, n, dtype=np.uint32) << 12)
            + rng.integers(0, 4096, n, dtype=np.uint32)).astype(np.uint32)


def _report(benchmark, name: str, ns: float) -> None:
    benchmark.extra_info[name] = round(ns, 2)
    print(f"\n{benchmark.name}: {ns:.2f} {name}")


@pytest.mark.parametrize("case", ["hit", "miss"])
def test_lookup_10k_routes_one_length(benchmark, case):
    t, d = _table(), _dsts(case == "hit")
    ns, hits = benchmark(t.bench_lookup, d, N_OPS)
    assert hits == (N_OPS if case == "hit" else 0)
    _report(benchmark, "ns_per_lookup", ns)


@pytest.mark.parametrize("case", ["hit", "miss"])
def test_lookup_10k_routes_three_lengths(benchmark, case):
    """A miss is the worst case: it probes every present prefix length (/24, /20, /16)."""
    t, d = _table((16, 20, 24)), _dsts(case == "hit")
    ns, hits = benchmark(t.bench_lookup, d, N_OPS)
    assert hits == (N_OPS if case == "hit" else 0)
    _report(benchmark, "ns_per_lookup", ns)


def test_transform_per_packet(benchmark):
    """validate + lookup + TTL-1 (incremental checksum) on a 1400-byte packet."""
    t = _table()
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1400, 1, 0x4000, 64, 6, 0,
                                bytes([10, 0, 0, 5]), bytes([10, 0, 0x50, 7])))
    struct.pack_into("!H", hdr, 10, ref.checksum(bytes(hdr)))
    ns, kept = benchmark(hooks.bench_transform, t, bytes(hdr) + bytes(1380), N_OPS)
    assert kept == N_OPS
    _report(benchmark, "ns_per_packet", ns)
