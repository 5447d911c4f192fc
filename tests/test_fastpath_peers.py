"""The fast path's per-peer counters through Python: two standalone Forwarders (support/node.py)
in namespace hosts. With one peer each, the per-peer rows must account for exactly what the
totals count, in every tier: tx packets/bytes = what left on the UDP socket, rx = what was
accepted. The C side (index reuse, unknown senders, quiescence) is tests/csrc/test_peers.c."""
from __future__ import annotations

import ipaddress
import sys

import pytest

from fastflannel.fastpath import PEER_DTYPE, PEER_STAT_NAMES
from fastflannel.lab import run
from support.overlay import LEASE, MB, Overlay, program

pytestmark = pytest.mark.netns


def _row(stats: dict, subnet: str) -> dict:
    net = ipaddress.ip_network(subnet)
    rows = [r for r in stats["peers"] if (r["net"], r["prefix"]) == (int(net.network_address), net.prefixlen)]
    assert len(rows) == 1, stats["peers"]
    return rows[0]


def test_peer_dtype_has_the_route_and_every_counter():
    assert PEER_DTYPE.names == ("net", "prefix", "peer_ip", "peer_port") + PEER_STAT_NAMES
    assert {"tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "last_rx_ns"} <= set(PEER_STAT_NAMES)


@pytest.mark.parametrize("cfg", [{"offload": False}, {"offload": True}, {"offload": True, "workers": 2}],
                         ids=["tier1", "offload", "offload-w2"])
def test_per_peer_rows_account_for_the_totals(lab, cfg):
    """A TCP transfer both ways (segmented, GSO trains, GRO'd writes): each host's row for the
    other equals its own totals, so no packet is counted twice or missed by the per-peer path."""
    ov = Overlay(lab, **cfg)
    ov.tcp_transfer(8 * MB, seed=21, port=5021)
    ov.tcp_transfer(2 * MB, seed=22, port=5022, src="h2", dst="h1")
    received = {"h1": 2 * MB, "h2": 8 * MB}
    for name, other in (("h1", "h2"), ("h2", "h1")):
        def settled(n=name, o=other):
            s = ov.stats(n)       # written every 100 ms: wait until it shows the whole transfer
            r = _row(s, LEASE[o] + "/20")
            # (both ways: a snapshot taken before this host's own transfer would match too)
            return s["tun_tx_bytes"] > received[n] and s["udp_tx_bytes"] > received[o] and \
                r["rx_packets"] == s["udp_rx_packets"] and \
                (r["tx_packets"], r["tx_bytes"]) == (s["udp_tx_packets"], s["udp_tx_bytes"])
        ov.wait_for(settled, f"{name}'s row for {other} to match its totals")
        s = ov.stats(name)
        r = _row(s, LEASE[other] + "/20")
        assert r["peer_ip"] == int(ipaddress.ip_address(ov.h[other].ip)), r
        assert r["tx_packets"] > 1000 and r["rx_packets"] > 100, r
        # nothing was dropped, so the accepted bytes are every byte received
        assert r["rx_bytes"] == s["udp_rx_bytes"], r
        drops = ("rx_spoofed", "rx_dst_special", "rx_dst_foreign", "rx_dropped", "tx_dropped")
        assert [r[k] for k in drops] == [0] * len(drops), r
        assert r["last_rx_ns"] > 0


@pytest.mark.parametrize("workers", [1, 2])
def test_drops_count_for_the_sender(lab, workers):
    """support/programs/spoof_attack.py from h3 against h2, forging h1: the 2 forged datagrams
    with a foreign inner source count as spoofed and the forged one with h1's inner source as
    received, under h1's row; h3 (no peer) appears among the unknown senders with its 2 valid
    datagrams, and its malformed ones go to no peer's row."""
    ov = Overlay(lab, workers=workers)
    attacker = lab.add_host("h3")
    before = _row(ov.stats("h2"), LEASE["h1"] + "/20")
    p = run(lab.ns_cmd(attacker.ns, sys.executable, program("spoof_attack.py"), ov.h["h2"].ip, "8285",
                       ov.h["h1"].ip), check=False)
    assert p.returncode == 0 and "sent" in p.stdout, p.stderr
    ov.wait_for(lambda: ov.stats("h2")["unknown_sender"] >= 2 and ov.stats("h2")["spoofed"] >= 2, "drops")
    s = ov.stats("h2")
    after = _row(s, LEASE["h1"] + "/20")
    assert after["rx_spoofed"] - before["rx_spoofed"] == 2, after
    assert after["rx_packets"] - before["rx_packets"] == 1, after
    assert after["rx_dropped"] == before["rx_dropped"], after
    assert s["unknown_senders"] == [{attacker.ip: 2}, 0], s["unknown_senders"]
