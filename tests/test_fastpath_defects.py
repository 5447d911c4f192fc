"""The fast-path defects of issue 8 (7 and 10), on real TUN devices between namespace hosts.

Same setup as tests/test_fastpath_netns.py (support/overlay.py): each host namespace runs
support/node.py; traffic only goes between addresses inside the namespaces the `lab` fixture
creates and deletes. Every loop is bounded in time and count. The C parts of defects 8-10 are
tests/csrc/test_gro_defects.c (GRO rules and cost), test_accept.c (the accept path) and
test_defects_fwd.c (a full receive batch, the ICMP rate limit and RFC 1812 exclusions, virtio
checksum offsets).
"""
from __future__ import annotations

import sys
import time

import pytest

from fastflannel import lab as labmod
from fastflannel.fastpath import DROP_REASONS
from support.overlay import MB, PORT, Overlay, program

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


# Inner destinations a peer (h1) asks h2 to deliver, and what h2 must do with each. Every one is
# inside the lab: h2's own subnet, its loopback, the hub, an unleased overlay subnet; the
# link-local (metadata) and multicast ones could only have reached h2 and the hub namespace.
DECAP = {"10.10.32.7": "ok", "10.10.32.0": "ok", "127.0.0.1": "dst_special",
         "169.254.169.254": "dst_special", "224.0.0.1": "dst_special", "10.10.47.255": "dst_special",
         "10.10.48.1": "dst_foreign", "10.10.16.20": "dst_foreign", "192.0.2.1": "dst_foreign"}


@pytest.mark.parametrize("offload", [False, True], ids=["tier1", "offload"])
def test_decap_only_for_our_subnet(lab, offload):
    """Defect 10: a known peer could have any inner destination written into our TUN (loopback,
    a metadata address, another subnet). With anti-spoofing only h2's own lease is delivered;
    the rest is counted by reason."""
    ov = Overlay(lab, offload=offload, tun_prefix=20)
    before = ov.stats("h2")
    p = labmod.run(lab.ns_cmd(ov.h["h1"].ns, sys.executable, program("decap_targets.py"), ov.h["h2"].ip,
                              str(PORT), "10.10.16.9", *DECAP), check=False)
    assert p.returncode == 0 and "sent" in p.stdout, p.stderr
    ov.wait_for(lambda: ov.stats("h2")["udp_rx_packets"] - before["udp_rx_packets"] >= len(DECAP),
                "datagrams at h2")
    ov.wait_for(lambda: ov.stats("h2")["tun_tx_packets"] - before["tun_tx_packets"] >= 2, "deliveries")
    time.sleep(0.3)                          # two more counter snapshots: nothing else arrives
    after = ov.stats("h2")
    delta = {k: after[k] - before[k] for k in ("tun_tx_packets", *DROP_REASONS) if k in after}
    want = list(DECAP.values())
    assert delta["tun_tx_packets"] == want.count("ok"), delta
    # 10.10.32.7 is in h2's subnet but no host of h2: its kernel sends it back out the TUN, where
    # the forwarder finds no route for it (no_route 1)
    assert delta == dict(dict.fromkeys(DROP_REASONS, 0), tun_tx_packets=want.count("ok"), no_route=1,
                         dst_special=want.count("dst_special"), dst_foreign=want.count("dst_foreign"))
