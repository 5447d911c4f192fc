"""The fast-path defects of issue 8 (7 and 10), on real TUN devices between namespace hosts.

Same setup as tests/test_fastpath_netns.py (support/overlay.py): each host namespace runs
support/node.py; traffic only goes between addresses inside the namespaces the `lab` fixture
creates and deletes. Every loop is bounded in time and count. The C parts of defects 8-10 are
tests/csrc/test_gro_defects.c and test_accept.c.
"""
from __future__ import annotations

import time

import pytest

from fastflannel.fastpath import DROP_REASONS
from support.overlay import MB, Overlay

pytestmark = pytest.mark.netns


def _drops(s: dict) -> dict:
    return {k: s[k] for k in DROP_REASONS if s[k]}


@pytest.mark.parametrize("workers", [1, 2])
def test_small_mss_superframes_cross_whole(lab, workers):
    """Defect 7: the receiver advertises MSS 400, so the sender's TSO superframes (64 KiB) need
    up to 164 segments, more than a slot holds (128): they were dropped whole as tun_invalid and
    the transfer collapsed. Split in chunks, every byte arrives and nothing is dropped."""
    ov = Overlay(lab, offload=True, workers=workers)
    tun = ov.stats("h2")["tun"]
    # the SYN-ACK of h2's sink advertises MSS 400 to h1 (the route back to h1's subnet)
    lab.sh(ov.h["h2"].ns, f"ip route change 10.0.0.0/8 dev {tun} advmss 400")
    t0 = time.monotonic()
    ov.tcp_transfer(8 * MB, seed=81, port=5081, timeout=60)
    took = time.monotonic() - t0
    # the nodes write their counters every 100 ms: wait until h1's show the whole transfer
    ov.wait_for(lambda: ov.stats("h1")["tun_rx_packets"] > 8 * MB // 400, "h1's counters")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    print(f"MSS 400, workers {workers}: 8 MiB in {took:.2f} s, drops h1 {_drops(s1)} h2 {_drops(s2)}")
    assert s1["tun_gso_frames"] > 0, s1                    # superframes were read and split
    assert s1["tun_rx_packets"] > 8 * MB // 400, s1        # ... into MSS-400 segments
    assert _drops(s1) == {} and _drops(s2) == {}, (s1, s2)
