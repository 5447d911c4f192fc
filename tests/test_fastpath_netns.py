"""Two Forwarders in two namespaces, joined by the lab's underlay bridge (192.0.2.0/24).

Each host namespace runs tests/support/node.py with `ip netns exec`: it opens a Forwarder on
flannel0, configures the TUN as flannel's udp backend does (<lease IP>/32, MTU 1472, route
10.0.0.0/8), adds its peer's route and writes its counters as JSON every 100 ms and on SIGTERM.
The programs run inside the namespaces are tests/support/programs/. Traffic goes only between
addresses inside the namespaces made here; the lab fixture deletes them all.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import time

import pytest

from fastflannel import lab as labmod
from fastflannel.fastpath import DROP_REASONS
from support import reference as ref
from support.overlay import LEASE, MB, PORT, Hosts, Overlay, node_cmd, parallel_transfer, pcap_udp_payloads, program

pytestmark = pytest.mark.netns


def _assert_no_drops(*stats) -> None:
    for s in stats:
        assert {k: s[k] for k in DROP_REASONS} == dict.fromkeys(DROP_REASONS, 0), s


def test_offload_node_interoperates_with_plain_node(lab):
    """An offload forwarder and a tier-1 one (which speaks exactly flannel's per-packet format)
    exchange TCP both ways: the plain side must accept the offload side's datagrams and vice versa."""
    ov = Overlay(lab, offload={"h1": True, "h2": False})
    ov.tcp_transfer(10 * MB, seed=4, port=5001, src="h1", dst="h2")
    ov.tcp_transfer(10 * MB, seed=5, port=5002, src="h2", dst="h1")
    ov.wait_for(lambda: ov.stats("h1")["tun_tx_bytes"] > 10 * MB and ov.stats("h2")["tun_tx_bytes"] > 10 * MB,
                "counters")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    assert s1["tun_gso_frames"] > 0 and s1["tun_gro_merged"] > 0, s1
    assert s2["tun_gso_frames"] == 0 and s2["tun_gro_merged"] == 0, s2
    _assert_no_drops(s1, s2)


@pytest.mark.parametrize("offload, workers", [(False, 1), (True, 1), (True, 2)],
                         ids=["tier1", "offload", "offload-workers2"])
def test_interoperates_with_a_flannel_style_proxy(lab, offload, workers):
    """h1 runs our Forwarder, h2 a per-packet proxy written from flannel's description. With
    workers=2 h1 sends from per-worker ports: flannel's receiver does not look at the port."""
    hosts = Hosts(lab)
    h1, h2 = hosts.h["h1"], hosts.h["h2"]
    stats = os.path.join(lab.tmp, "stats-h1.json")
    cfg1 = {"bind_ip": h1.ip, "tun_ip": LEASE["h1"], "offload": offload, "stats": stats, "workers": workers,
            "routes": [[LEASE["h2"] + "/20", h2.ip]]}
    lab.spawn(h1.ns, node_cmd(cfg1), "node-h1.log")
    cfg2 = {"bind_ip": h2.ip, "tun_ip": LEASE["h2"], "route": [LEASE["h1"] + "/20", h1.ip]}
    hosts.spawn("h2", "flannel_proxy.py", json.dumps(cfg2), log="proxy-h2.log")
    hosts.wait_for(lambda: os.path.exists(stats) and "ready" in lab.log("proxy-h2.log"), "both sides up")
    ping = lab.sh(h1.ns, f"ping -c 3 -i 0.2 -W 2 {LEASE['h2']}", check=False)
    assert ping.returncode == 0, ping.stdout + lab.log("proxy-h2.log")
    hosts.tcp_transfer(3 * MB, seed=6, port=5003, src="h1", dst="h2")
    hosts.tcp_transfer(3 * MB, seed=7, port=5004, src="h2", dst="h1")
    if workers > 1:
        parallel_transfer(hosts, streams=8, nbytes=MB, seed=8, port=5005)


@pytest.mark.parametrize("offload", [False, True], ids=["tier1", "offload"])
def test_tcp_transfer_and_wire_format(lab, offload):
    ov = Overlay(lab, offload=offload)
    h1, h2 = ov.h["h1"], ov.h["h2"]
    pcap = os.path.join(lab.tmp, "wire.pcap")
    lab.spawn(h2.ns, ["tcpdump", "-i", "eth0", "-n", "-U", "-c", "4", "-w", pcap,
                      f"udp dst port {PORT} and src host {h1.ip}"], "tcpdump.log")
    ov.wait_for(lambda: "listening on" in lab.log("tcpdump.log"), "tcpdump", timeout=10)
    ping = lab.sh(h1.ns, f"ping -c 4 -i 0.2 -W 2 -t 50 -s 100 {LEASE['h2']}", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    ov.wait_for(lambda: os.path.exists(pcap) and os.path.getsize(pcap) > 24 * 4, "capture")
    time.sleep(0.3)
    frames = list(pcap_udp_payloads(pcap))
    assert frames, lab.log("tcpdump.log")
    for src, dst, sport, dport, inner in frames:
        assert (src, dst, sport, dport) == (bytes(map(int, h1.ip.split("."))),
                                           bytes(map(int, h2.ip.split("."))), PORT, PORT)
        # flannel's wire format: the payload is exactly the inner IPv4 packet, nothing before it
        assert ref.validate(inner) == ref.PKT_OK and struct.unpack_from("!H", inner, 2)[0] == len(inner)
        assert inner[9] == 1 and inner[20] == 8                   # ICMP echo request
        assert inner[8] == 49                                     # ping -t 50, forwarder TTL-1
        assert ref.checksum(inner[:20]) == 0
        assert inner[12:16] == bytes([10, 10, 16, 0]) and inner[16:20] == bytes([10, 10, 32, 0])
        assert len(inner) == 20 + 8 + 100
    # the TCP data itself on the wire: one inner packet per datagram, never a superframe
    pcap2 = os.path.join(lab.tmp, "tcp.pcap")
    lab.spawn(h2.ns, ["tcpdump", "-i", "eth0", "-n", "-U", "-c", "300", "-w", pcap2,
                      f"udp dst port {PORT} and src host {h1.ip} and greater 1000"], "tcpdump2.log")
    ov.wait_for(lambda: "listening on" in lab.log("tcpdump2.log"), "tcpdump", timeout=10)
    ov.tcp_transfer(10 * MB, seed=1)
    ov.wait_for(lambda: ov.stats("h2")["tun_tx_bytes"] > 10 * MB and ov.stats("h1")["udp_tx_bytes"] > 10 * MB,
                "counters (written every 100 ms)")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    assert s1["udp_tx_bytes"] > 10 * MB and s1["tun_rx_bytes"] >= s1["udp_tx_bytes"]
    assert (s1["tun_gso_frames"] > 0) == offload, s1        # TSO superframes only with offload
    assert (s2["tun_gro_merged"] > 0) == offload, s2        # and userspace GRO before the TUN
    ov.wait_for(lambda: os.path.exists(pcap2) and os.path.getsize(pcap2) > 300 * 1000, "tcp capture")
    time.sleep(0.3)
    tcp = []
    for *_, payload in pcap_udp_payloads(pcap2):
        # A veth hands the receiver a UDP_SEGMENT train as one skb, so a capture may show several
        # inner packets back to back; the kernel (or a NIC) cuts it at gso_size, so every packet
        # but the last must have the same size. Without offload each datagram is one packet.
        train = []
        while payload:
            assert ref.validate(payload) == ref.PKT_OK
            n = struct.unpack_from("!H", payload, 2)[0]
            train.append(payload[:n])
            payload = payload[n:]
        assert len(train) == 1 or (offload and len({len(p) for p in train[:-1]}) == 1
                                   and len(train[-1]) <= len(train[0])), [len(p) for p in train]
        tcp += train
    assert len(tcp) >= 250
    for inner in tcp:
        assert len(inner) <= 1472 and inner[9] == 6 and ref.checksum(inner[:20]) == 0
        # TCP checksum over the pseudo-header: segments split in user space must be complete
        ihl = (inner[0] & 15) * 4
        pseudo = inner[12:20] + struct.pack("!BBH", 0, 6, len(inner) - ihl)
        assert ref.checksum(pseudo + inner[ihl:]) == 0
    _assert_no_drops(s1, s2)


@pytest.mark.parametrize("offload, workers", [(False, 1), (True, 1), (True, 2)],
                         ids=["tier1", "offload", "offload-workers2"])
def test_icmp_net_unreachable_for_unknown_subnet(lab, offload, workers):
    ov = Overlay(lab, offload=offload, workers=workers)
    # flannel sources the reply from the TUN's own address; the kernel drops a packet arriving
    # with a local source address as martian unless accept_local is set on the receiving device.
    lab.sh(ov.h["h1"].ns, f"sysctl -qw net.ipv4.conf.{ov.stats('h1')['tun']}.accept_local=1")
    p = ov.run("h1", "icmp_probe.py", "10.50.0.1", timeout=20)
    assert p.returncode == 0, p.stderr
    icmp = bytes.fromhex(p.stdout.strip())
    assert ref.validate(icmp) == ref.PKT_OK and ref.checksum(icmp[:20]) == 0
    assert icmp[8] == 8 and icmp[9] == 1                                   # flannel: TTL 8, ICMP
    assert icmp[12:16] == bytes([10, 10, 16, 0]) and icmp[16:20] == bytes([10, 10, 16, 0])
    assert icmp[20:22] == b"\x03\x00" and ref.checksum(icmp[20:]) == 0    # net unreachable
    quoted = icmp[28:]
    assert len(quoted) == 28 and quoted[9] == 17 and quoted[16:20] == bytes([10, 50, 0, 1])
    # never an ICMP error about an ICMP packet (flannel proxy_amd64.c)
    ping = lab.sh(ov.h["h1"].ns, "ping -c 1 -W 1 10.50.0.2", check=False)
    assert ping.returncode != 0 and "Unreachable" not in ping.stdout
    # TTL 1 reaches 0 at the forwarder: dropped silently and counted (flannel sends no Time Exceeded)
    ping = lab.sh(ov.h["h1"].ns, f"ping -c 1 -W 1 -t 1 {LEASE['h2']}", check=False)
    assert ping.returncode != 0
    ov.wait_for(lambda: ov.stats("h1")["ttl"] >= 1, "ttl counter")
    s = ov.stats("h1")
    assert s["no_route"] == 2 and s["icmp_sent"] == 1 and s["ttl"] == 1 and s["udp_tx_packets"] == 0


def _attack(lab, attacker, ov):
    """support/programs/spoof_attack.py from the attacker's namespace against h2, forging h1."""
    return labmod.run(lab.ns_cmd(attacker.ns, sys.executable, program("spoof_attack.py"), ov.h["h2"].ip,
                                 str(PORT), ov.h["h1"].ip), check=False)


@pytest.mark.parametrize("offload, workers", [(False, 1), (True, 1), (False, 2)],
                         ids=["tier1", "offload", "workers2"])
def test_malformed_and_spoofed_are_dropped_and_counted(lab, offload, workers):
    ov = Overlay(lab, offload=offload, workers=workers)
    attacker = lab.add_host("h3")
    before = ov.stats("h2")
    p = _attack(lab, attacker, ov)
    assert p.returncode == 0 and "sent" in p.stdout, p.stderr
    ov.wait_for(lambda: ov.stats("h2")["udp_rx_packets"] - before["udp_rx_packets"] >= 17, "datagrams")
    ov.tcp_transfer(2 * MB, seed=3)        # forwarding continues
    after = ov.stats("h2")
    delta = {k: after[k] - before[k] for k in DROP_REASONS}
    assert delta == dict(dict.fromkeys(DROP_REASONS, 0), short=5, bad_header=4, bad_length=3,
                         unknown_sender=2, spoofed=2)


def test_anti_spoof_off_accepts_any_sender(lab):
    ov = Overlay(lab, anti_spoof=False)
    attacker = lab.add_host("h3")
    p = _attack(lab, attacker, ov)
    assert p.returncode == 0, p.stderr
    ov.wait_for(lambda: ov.stats("h2")["udp_rx_packets"] >= 17, "datagrams")
    s = ov.stats("h2")
    assert (s["short"], s["bad_header"], s["bad_length"]) == (5, 4, 3)
    assert s["unknown_sender"] == 0 and s["spoofed"] == 0
    ov.wait_for(lambda: ov.stats("h2")["tun_tx_packets"] >= 5, "accepted datagrams written")


@pytest.mark.parametrize("offload", [False, True], ids=["tier1", "offload"])
def test_routes_replaced_under_load(lab, offload):
    ov = Overlay(lab, churn=True, offload=offload)
    ov.wait_for(lambda: ov.stats("h1")["replacements"] > 5, "churn running")
    before = {n: ov.stats(n) for n in ov.h}
    ov.tcp_transfer(20 * MB, seed=2)
    after = {n: ov.stats(n) for n in ov.h}
    for n in ov.h:
        assert after[n]["replacements"] - before[n]["replacements"] >= 20, after[n]
        assert after[n]["no_route"] == 0 and after[n]["send_error"] == 0, after[n]


# ---- offload kill switches and fallbacks ------------------------------------------------------
PARTS = ("tun_tso", "udp_gso", "udp_gro", "tcp_gro")


def _expected_features(off: str) -> dict:
    want = {p: p != off for p in PARTS}
    if off == "tun_tso":
        want["tcp_gro"] = False            # merged TUN writes need the vnet header
    return want


@pytest.mark.parametrize("off", PARTS)
def test_offload_with_one_part_switched_off(lab, off):
    """offload=True with one part off: byte-exact both ways, and features says exactly that."""
    ov = Overlay(lab, offload=True, **{off: False})
    ov.tcp_transfer(10 * MB, seed=11, port=5011)
    ov.tcp_transfer(4 * MB, seed=12, port=5012, src="h2", dst="h1")
    ov.wait_for(lambda: ov.stats("h2")["tun_tx_bytes"] > 10 * MB, "counters")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    want = _expected_features(off)
    for s in (s1, s2):
        assert {p: s["features"][p] for p in PARTS} == want, s["features"]
        assert s["offload_fallbacks"] == 0, s
    assert (s1["tun_gso_frames"] > 0) == want["tun_tso"], s1
    assert (s2["tun_gro_merged"] > 0) == want["tcp_gro"], s2
    _assert_no_drops(s1, s2)


@pytest.mark.parametrize("part", PARTS)
def test_offload_fallback_when_the_kernel_refuses(lab, part):
    """The kernel call of one part fails once (TUNSETOFFLOAD / UDP_GRO setsockopt at open; EIO
    on the first UDP_SEGMENT send; EINVAL on the first merged TUN write): that part goes off,
    the fallback is counted, and nothing is lost or corrupted (the refused train / merged item
    is resent as single packets)."""
    ov = Overlay(lab, offload=True, refuse=[part])
    ov.tcp_transfer(10 * MB, seed=13, port=5013)
    ov.wait_for(lambda: ov.stats("h2")["tun_tx_bytes"] > 10 * MB, "counters")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    # refused at open on both hosts; at run time where the part first acts (sender / receiver)
    hit = {"tun_tso": (s1, s2), "udp_gro": (s1, s2), "udp_gso": (s1,), "tcp_gro": (s2,)}[part]
    for s in hit:
        assert s["features"][part] is False and s["offload_fallbacks"] >= 1, s
        assert s["fallbacks"][part] >= 1 and sum(s["fallbacks"].values()) == s["offload_fallbacks"], s
        if part == "tun_tso":
            assert s["features"]["tcp_gro"] is False
    if part == "tun_tso":
        assert s1["tun_gso_frames"] == 0
    for p in PARTS:
        if p != part and not (part == "tun_tso" and p == "tcp_gro"):
            assert s1["features"][p] and s2["features"][p], (p, s1["features"], s2["features"])
    _assert_no_drops(s1, s2)


# ---- multi-queue workers ----------------------------------------------------------------------
def _busy_queues(s: dict, key: str, floor: int) -> int:
    return sum(q[key] > floor for q in s["queues"])


@pytest.mark.parametrize("offload", [False, True], ids=["tier1", "offload"])
def test_workers2_parallel_streams(lab, offload):
    """workers=2: 16 parallel TCP streams arrive byte-exact; both queues carry traffic on both
    hosts (the kernel spreads flows over the TUN queues, the per-worker source ports over the
    receive sockets), and the per-queue counters add up to the totals."""
    ov = Overlay(lab, offload=offload, workers=2)
    for n in ov.h:
        f = ov.stats(n)["features"]
        assert f["workers"] == 2 and f["tun_tso"] == offload and f["udp_gso"] == offload, f
    parallel_transfer(ov, streams=16, nbytes=2 * MB, seed=21, port=5021)
    ov.wait_for(lambda: ov.stats("h2")["tun_tx_bytes"] > 32 * MB, "counters")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    assert _busy_queues(s1, "udp_tx_bytes", MB) == 2, s1["queues"]
    assert _busy_queues(s2, "tun_tx_bytes", MB) == 2, s2["queues"]
    # the per-queue counters add up to the totals (read once traffic has settled)
    keys = ("udp_tx_bytes", "udp_rx_bytes", "tun_rx_packets", "tun_tx_packets")
    ov.wait_for(lambda: all(sum(q[k] for q in s["queues"]) == s[k]
                            for s in (ov.stats("h1"), ov.stats("h2")) for k in keys), "queue sums")
    # steering: what h1's worker i sent (from its port = i mod 2) is what h2's worker i received.
    # Compare once the counters stop moving: a sender counts a datagram only after sendmmsg
    # returns, so while stray packets still flow the receiver can be one ahead.
    def quiet():
        before = (ov.stats("h1")["udp_tx_packets"], ov.stats("h2")["udp_rx_packets"])
        time.sleep(0.3)
        return before == (ov.stats("h1")["udp_tx_packets"], ov.stats("h2")["udp_rx_packets"])
    ov.wait_for(quiet, "counters quiet")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    for q1, q2 in zip(s1["queues"], s2["queues"]):
        assert 0.95 * q1["udp_tx_packets"] <= q2["udp_rx_packets"] <= q1["udp_tx_packets"], (s1["queues"], s2["queues"])
    _assert_no_drops(s1, s2)


@pytest.mark.parametrize("offload", [False, True], ids=["tier1", "offload"])
def test_workers2_one_flow_stays_on_one_worker(lab, offload):
    """One TCP flow is never spread over threads: on each host one queue carries all its data
    (the other sees at most a few stray packets)."""
    ov = Overlay(lab, offload=offload, workers=2)
    ov.tcp_transfer(8 * MB, seed=22, port=5022)
    # each node rewrites its counters every 0.1 s, longer than the transfer takes with offloads:
    # wait until both hosts' snapshots cover it (an h1 snapshot from before it counts nothing,
    # and its all-zero row made the max's index 0 whichever queue carried the flow)
    ov.wait_for(lambda: ov.stats("h2")["tun_tx_bytes"] > 8 * MB and ov.stats("h1")["udp_tx_bytes"] > 8 * MB,
                "counters")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    busy = set()
    for s, key in ((s1, "udp_tx_bytes"), (s2, "udp_rx_bytes"), (s2, "tun_tx_bytes"), (s1, "udp_rx_packets")):
        vals = [q[key] for q in s["queues"]]
        assert min(vals) == 0 and max(vals) > 0, (key, s["queues"])
        busy.add(vals.index(max(vals)))
    assert len(busy) == 1, (s1["queues"], s2["queues"])       # worker i <-> the peer's worker i
    _assert_no_drops(s1, s2)


@pytest.mark.parametrize("offload, workers", [(False, 1), (True, 1), (True, 2)],
                         ids=["tier1", "offload", "offload-workers2"])
def test_duplex_one_thread_per_queue_both_ways(lab, offload, workers):
    """duplex: one thread serves both directions of its queue. TCP both ways at once and a
    ping while they run arrive intact (a thread busy sending must still receive), and each
    direction is counted on the queue that carried it, with no drops."""
    ov = Overlay(lab, offload=offload, workers=workers, duplex=True)
    parallel_transfer(ov, streams=2, nbytes=4 * MB, seed=24, port=5024)
    ov.tcp_transfer(4 * MB, seed=25, port=5026, src="h2", dst="h1")
    ping = lab.sh(ov.h["h1"].ns, f"ping -c 20 -i 0.01 -W 2 {LEASE['h2']}", check=False)
    assert ping.returncode == 0, ping.stdout
    ov.wait_for(lambda: ov.stats("h1")["tun_tx_bytes"] > 4 * MB and ov.stats("h2")["tun_tx_bytes"] > 8 * MB,
                "counters")
    s1, s2 = ov.stats("h1"), ov.stats("h2")
    assert len(s1["queues"]) == workers and sum(q["udp_tx_bytes"] for q in s1["queues"]) == s1["udp_tx_bytes"]
    assert (s2["tun_gro_merged"] > 0) == offload, s2
    _assert_no_drops(s1, s2)


@pytest.mark.parametrize("offload", [False, True], ids=["tier1", "offload"])
def test_workers2_routes_replaced_under_load(lab, offload):
    ov = Overlay(lab, churn=True, offload=offload, workers=2)
    ov.wait_for(lambda: ov.stats("h1")["replacements"] > 5, "churn running")
    before = {n: ov.stats(n) for n in ov.h}
    parallel_transfer(ov, streams=4, nbytes=5 * MB, seed=23, port=5023)
    after = {n: ov.stats(n) for n in ov.h}
    for n in ov.h:
        assert after[n]["replacements"] - before[n]["replacements"] >= 20, after[n]
    _assert_no_drops(*after.values())


def _settled(ov, name: str, counter: str, quiet_s: float = 2.0, limit_s: float = 15.0) -> dict:
    """Stats once `counter` has not moved for `quiet_s` (at most `limit_s`)."""
    deadline = time.monotonic() + limit_s
    last, since = ov.stats(name), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = ov.stats(name)
        if now[counter] != last[counter]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    pytest.fail(f"{counter} of {name} kept moving for {limit_s} s")


@pytest.mark.parametrize("offload", [False, True], ids=["tier1", "offload"])
def test_ipv6_from_the_kernel_is_a_counted_tun_drop(lab, offload):
    """The udp backend is IPv4 only (as flannel's): IPv6 packets the host routes into flannel0
    (here 5 datagrams to fd00:77::2, a ULA route inside h1's namespace) are dropped and counted
    as tun_invalid, never sent, and IPv4 forwarding goes on."""
    ov = Overlay(lab, offload=offload)
    ns = ov.h["h1"].ns
    lab.sh(ns, "sysctl -qw net.ipv6.conf.flannel0.disable_ipv6=0 && ip -6 addr add fd00:77::1/64 dev flannel0 nodad")
    before = _settled(ov, "h1", "tun_invalid")       # the kernel's own MLD reports come first
    code = ("import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            "for _ in range(5): s.sendto(b'x' * 40, ('fd00:77::2', 9))")
    p = labmod.run(lab.ns_cmd(ns, sys.executable, "-c", code), check=False)
    assert p.returncode == 0, p.stderr
    ov.wait_for(lambda: ov.stats("h1")["tun_invalid"] - before["tun_invalid"] >= 5, "IPv6 drops")
    ov.tcp_transfer(1 * MB, seed=4)                  # asserts every byte arrived
    assert ov.stats("h1")["tun_invalid"] - before["tun_invalid"] == 5
