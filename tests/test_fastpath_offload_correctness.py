"""Correctness under offload (issue #5): what crosses two (or three) Forwarder nodes in namespaces
with TSO split, UDP GSO/GRO and userspace TCP GRO on must arrive exactly as sent, and every
datagram on the underlay must be one complete inner IPv4 packet (flannel's wire format).

Same setup as tests/test_fastpath_netns.py (support/overlay.py): each host namespace runs
support/node.py, the programs are support/programs/; traffic only goes between addresses inside
the namespaces the `lab` fixture creates and deletes. Every loop is bounded in time and count.

Captures: a veth hands a UDP_SEGMENT train to the peer (and to tcpdump) as one GSO skb, so a
capture would show several inner packets per "datagram" although the kernel (or a NIC) cuts them
at gso_size. With `tx-udp-segmentation` off on the capturing hosts' eth0 the kernel segments the
train in software before the device, so the capture shows the datagrams the wire carries.
"""
from __future__ import annotations

import json
import os
import runpy
import struct
import sys
import time

import pytest

from fastflannel import lab as labmod
from fastflannel.fastpath import DROP_REASONS
from support import reference as ref
from support.overlay import LEASE, MB, PORT, Hosts, Overlay, node_cmd, pcap_udp_payloads, program

pytestmark = pytest.mark.netns


def _ip(s: str) -> bytes:
    return bytes(map(int, s.split(".")))


def _assert_no_drops(*stats) -> None:
    for s in stats:
        assert {k: s[k] for k in DROP_REASONS} == dict.fromkeys(DROP_REASONS, 0), s


def _settled(ov, names, keys=("udp_tx_packets", "udp_rx_packets", "tun_tx_packets", "tun_rx_packets")):
    """Counters once two consecutive snapshots (>= 100 ms apart, the node's write period) agree."""
    prev = None
    for _ in range(40):
        cur = {n: ov.stats(n) for n in names}
        snap = {n: tuple(cur[n][k] for k in keys) for n in names}
        if snap == prev:
            return cur
        prev = snap
        time.sleep(0.25)
    pytest.fail(f"counters did not settle: {prev}")


class Pair(Hosts):
    """Two hosts with a Forwarder each, routes to one another; per-host node config (mtu, ...)."""

    stats_path = Overlay.stats_path
    stats = Overlay.stats

    def __init__(self, lab: labmod.Lab, cfg: dict | None = None, per_host: dict | None = None):
        super().__init__(lab)
        self.cfg: dict = {}
        peers = {"h1": "h2", "h2": "h1"}
        for name, host in self.h.items():
            other = peers[name]
            c = {"bind_ip": host.ip, "port": PORT, "tun_ip": LEASE[name],
                 "routes": [[LEASE[other] + "/20", self.h[other].ip]], "stats": self.stats_path(name),
                 **(cfg or {}), **((per_host or {}).get(name, {}))}
            self.cfg[name] = c
            lab.spawn(host.ns, node_cmd(c), f"node-{name}.log")
        for name in self.h:
            self.wait_for(lambda n=name: os.path.exists(self.stats_path(n)), f"{name} forwarder up")

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.lab.procs if "node-" in getattr(p, "log_path", ""))


class Capture:
    """tcpdump on one host's eth0 into a pcap; stop() flushes it and returns the UDP frames."""

    def __init__(self, hosts: Hosts, name: str, filt: str, tag: str = "cap"):
        self.hosts, self.tag = hosts, tag
        self.pcap = os.path.join(hosts.lab.tmp, f"{tag}.pcap")
        self.proc = hosts.lab.spawn(hosts.h[name].ns, ["tcpdump", "-i", "eth0", "-n", "-U", "-B", "32768", "-s", "0",
                                                      "-w", self.pcap, filt], f"{tag}.log")
        hosts.wait_for(lambda: "listening on" in hosts.lab.log(f"{tag}.log"), "tcpdump", timeout=10)

    def stop(self) -> list:
        # written out: libpcap hands over a partly filled ring block only after its 1 s timeout
        sizes, deadline = [-2, -1], time.monotonic() + 12
        while time.monotonic() < deadline and (len(sizes) < 7 or len(set(sizes[-6:])) > 1):
            sizes.append(os.path.getsize(self.pcap))
            time.sleep(0.3)
        labmod.stop_process(self.proc)
        log = self.hosts.lab.log(f"{self.tag}.log").splitlines()
        counts = {" ".join(ln.split()[1:]): int(ln.split()[0]) for ln in log if ln[:1].isdigit()}
        # the capture itself is complete: everything the filter took was written, none dropped
        assert counts["packets dropped by kernel"] == 0, log
        assert counts["packets captured"] == counts["packets received by filter"], log
        return list(pcap_udp_payloads(self.pcap))


def _no_udp_tso(hosts: Hosts, *names: str) -> None:
    for n in names:
        hosts.lab.sh(hosts.h[n].ns, "ethtool -K eth0 tx-udp-segmentation off")


def _check_inner(inner: bytes, mtu: int) -> int:
    """One complete inner IPv4 packet: exact length, fits the MTU, IP and L4 checksums valid.
    Returns its protocol."""
    assert ref.validate(inner) == ref.PKT_OK, inner[:40].hex()
    tot = struct.unpack_from("!H", inner, 2)[0]
    assert tot == len(inner) <= mtu, (tot, len(inner))           # exactly one packet, no superframe
    ihl = (inner[0] & 15) * 4
    assert ref.checksum(inner[:ihl]) == 0, inner[:ihl].hex()
    proto = inner[9]
    frag = struct.unpack_from("!H", inner, 6)[0] & 0x3FFF
    if proto in (6, 17) and not frag:
        seg = inner[ihl:]
        if proto == 17 and seg[6:8] == b"\0\0":
            return proto                                          # UDP without checksum
        pseudo = inner[12:20] + struct.pack("!BBH", 0, proto, len(seg))
        assert ref.checksum(pseudo + seg) == 0, (proto, len(inner), seg[:20].hex())
    return proto


# ---- 1 / 5: UDP byte-exact (sizes 1..65507, inner fragments), windowed with acks -------------
def _sizes() -> dict:
    """support/programs/udp_sizes.py: sizes(), payload(), frags(), as the programs use them."""
    return runpy.run_path(program("udp_sizes.py"))


def udp_transfer(hosts: Hosts, n: int, seed: int, mtu: int = 1472, window: int = 16, port: int = 6001,
                 src: str = "h1", dst: str = "h2") -> dict:
    """n datagrams (udp_sizes.py sizes, two flows) src -> dst; every one must arrive byte-exact, none
    extra. Returns {"bytes", "reordered" (windows whose per-flow order differed), "in_class" (those
    where it differed among the fragmented or among the whole datagrams), "frags" (inner packets
    src sent), "acks" (datagrams dst sent), "sizes"}."""
    log = f"udprecv{port}.log"
    args = (LEASE[dst], str(port), str(n), str(seed), str(mtu), str(window))
    rcv = hosts.spawn(dst, "udp_recv.py", *args, log=log)
    hosts.wait_for(lambda: "ready" in hosts.lab.log(log), "udp receiver")
    snd = hosts.run(src, "udp_send.py", *args, timeout=60)
    rcv.wait(60)
    out = hosts.lab.log(log).split()
    assert snd.returncode == 0 and out[:2] == ["ready", "ok"], (snd.stderr, hosts.lab.log(log))
    d = _sizes()
    sz = d["sizes"](seed, n, mtu)
    assert out[2:4] == [str(n), str(sum(sz))], out
    return {"bytes": sum(sz), "reordered": int(out[4]), "in_class": int(out[5]),
            "frags": sum(d["frags"](s, mtu) for s in sz),
            "acks": -(-n // window), "sizes": sz}


def test_udp_sizes_cover_the_boundaries():
    """The generator really covers 1..65507, MTU-28 and fragmenting sizes, and equal-size runs."""
    sz = _sizes()["sizes"](1, 2000, 1472)
    assert len(sz) == 2000 and min(sz) == 1 and max(sz) == 65507
    assert {1443, 1444, 1445, 3000} <= set(sz)
    assert sum(s > 1444 for s in sz) > 100 and sum(s <= 1444 for s in sz) > 1500
    f = _sizes()["frags"]
    assert (f(1444, 1472), f(1445, 1472), f(2892, 1472), f(2893, 1472), f(65507, 1472)) == (1, 2, 2, 3, 46)


@pytest.mark.parametrize("offload, workers, duplex", [
    ({"h1": True, "h2": True}, 1, False), ({"h1": True, "h2": True}, 2, False),
    ({"h1": False, "h2": True}, 1, False), ({"h1": True, "h2": True}, 1, True),
    ({"h1": True, "h2": True}, 2, True)],
    ids=["offload", "offload-workers2", "plain-and-offload", "offload-duplex", "offload-workers2-duplex"])
def test_udp_datagrams_byte_exact(lab, offload, workers, duplex):
    """2000 UDP datagrams of 1..65507 bytes (inner IP fragments above 1444) over two flows, in
    windows of 16 acked by the receiver: each arrives byte-exact and in order (see below for
    workers=2), none lost or extra, and every
    inner packet (fragment) is one datagram on the wire each way (exact counters). Both
    directions; with a plain node on one side this is UDP plain <-> offload (item 5; TCP
    plain <-> offload is test_fastpath_netns.py::test_offload_node_interoperates_with_plain_node)."""
    ov = Overlay(lab, offload=offload, workers=workers, duplex=duplex)
    runs = [("h1", "h2", 31, 6001), ("h2", "h1", 32, 6011)]
    want = {"h1": dict.fromkeys(("udp_tx_packets", "udp_rx_packets", "tun_tx_packets"), 0)}
    want["h2"] = dict(want["h1"])
    for src, dst, seed, port in runs:
        r = udp_transfer(ov, 2000, seed=seed, port=port, src=src, dst=dst)
        # one worker: per-flow order exact. Two workers: the kernel picks a TUN queue by flow
        # hash, and a fragment's hash has no ports (addresses only), so a flow's fragmented
        # datagrams and its whole ones may ride different workers and overtake each other
        # (as with RSS on a multi-queue NIC); each class keeps its own order.
        assert r["in_class"] == 0, r
        if workers == 1:
            assert r["reordered"] == 0, r
        want[src]["udp_tx_packets"] += r["frags"]
        want[dst]["udp_rx_packets"] += r["frags"]
        want[dst]["tun_tx_packets"] += r["frags"]
        want[dst]["udp_tx_packets"] += r["acks"]
        want[src]["udp_rx_packets"] += r["acks"]
        want[src]["tun_tx_packets"] += r["acks"]
    s = _settled(ov, ("h1", "h2"))
    for n in ("h1", "h2"):
        assert {k: s[n][k] for k in want[n]} == want[n], (n, s[n])
        assert s[n]["tun_gro_merged"] == 0, s[n]             # fragments and UDP are never merged
    _assert_no_drops(s["h1"], s["h2"])


# ---- 2: every datagram on the wire during TCP both ways: one packet, checksums valid ---------
@pytest.mark.parametrize("workers", [1, 2], ids=["workers1", "workers2"])
def test_every_wire_datagram_is_one_packet_with_valid_checksums(lab, workers):
    ov = Overlay(lab, offload=True, workers=workers)
    h1, h2 = ov.h["h1"], ov.h["h2"]
    _no_udp_tso(ov, "h1", "h2")
    cap = Capture(ov, "h1", f"udp port {PORT}")
    ov.tcp_transfer(4 * MB, seed=41, port=5041)
    ov.tcp_transfer(2 * MB, seed=42, port=5042, src="h2", dst="h1")
    s = _settled(ov, ("h1", "h2"))
    frames = cap.stop()
    out = [f for f in frames if f[0] == _ip(h1.ip)]
    back = [f for f in frames if f[0] == _ip(h2.ip)]
    assert len(out) + len(back) == len(frames)
    # the wire count equals the inner-packet counters: one packet per datagram, nothing lost
    assert (len(out), len(back)) == (s["h1"]["udp_tx_packets"], s["h2"]["udp_tx_packets"]), s
    assert s["h2"]["udp_rx_packets"] == len(out) and s["h1"]["udp_rx_packets"] == len(back)
    protos, big = {}, 0
    for src, dst, _sport, dport, inner in frames:
        assert dport == PORT and {src, dst} == {_ip(h1.ip), _ip(h2.ip)}
        p = _check_inner(inner, 1472)
        protos[p] = protos.get(p, 0) + 1
        big += len(inner) > 1400
        # inner addresses are the two leases; TTL left at 63 (64 - the sending forwarder's 1)
        assert {inner[12:16], inner[16:20]} == {_ip(LEASE["h1"]), _ip(LEASE["h2"])} and inner[8] == 63
    assert protos == {6: len(frames)}, protos
    assert big > 3500, big                                   # the bulk was full-size segments
    for n in ("h1", "h2"):                                   # TSO split on each sender, GRO on each receiver
        assert s[n]["tun_gso_frames"] > 0 and s[n]["tun_gro_merged"] > 0, s[n]
    _assert_no_drops(s["h1"], s["h2"])


# ---- 3: mixed MTUs -------------------------------------------------------------------------
def _route_mtu(lab, ns: str, dst: str) -> str:
    out = lab.sh(ns, f"ip route get {dst}").stdout
    toks = out.split()
    return toks[toks.index("mtu") + 1] if "mtu" in toks else ""


def _snmp(lab, ns: str, group: str, key: str) -> int:
    """A counter of /proc/net/snmp in a namespace (0 when the kernel has not created it yet)."""
    out = lab.sh(ns, "cat /proc/net/snmp").stdout.splitlines()
    rows = [ln.split() for ln in out if ln.startswith(group + ":")]
    return int(dict(zip(rows[0], rows[1])).get(key, 0)) if len(rows) >= 2 else 0


def _icmp_frag_needed_sent(lab, ns: str) -> int:
    return _snmp(lab, ns, "IcmpMsg", "OutType3")


def test_mixed_tun_and_endpoint_mtus(lab):
    """h1's TUN MTU 1472, h2's 1400; endpoints behind bridges with interface MTU 1500 (above
    either TUN). TCP both ways between the endpoints arrives byte-exact. What happens: each
    endpoint's first full-size segment is refused by its own host (forwarding into a smaller
    TUN, DF set) with ICMP frag-needed, so the endpoint learns the path MTU of its side (1472,
    1400) - a local hop, the ICMP never crosses the overlay. The receiving forwarder writes
    packets larger than its own TUN MTU (1472 > 1400) and the kernel accepts them. The TUN
    addresses themselves talk with MSS clamped by each TUN (no ICMP)."""
    ov = Pair(lab, cfg={"offload": True}, per_host={"h1": {"mtu": 1472}, "h2": {"mtu": 1400}})
    c1 = lab.add_container(ov.h["h1"], {"FLANNEL_SUBNET": "10.10.16.1/20", "FLANNEL_MTU": "1500"})
    c2 = lab.add_container(ov.h["h2"], {"FLANNEL_SUBNET": "10.10.32.1/20", "FLANNEL_MTU": "1500"})
    for (a, b) in ((c1, c2), (c2, c1)):
        r = labmod.tcp_transfer(lab, a.ns, b.ns, b.ip, 4 * MB, port=5051, timeout=30)
        assert r["ok"], r
    assert (_route_mtu(lab, c1.ns, c2.ip), _route_mtu(lab, c2.ns, c1.ip)) == ("1472", "1400")
    assert _icmp_frag_needed_sent(lab, ov.h["h1"].ns) >= 1 and _icmp_frag_needed_sent(lab, ov.h["h2"].ns) >= 1
    ov.tcp_transfer(2 * MB, seed=52, port=5052)
    ov.tcp_transfer(2 * MB, seed=53, port=5053, src="h2", dst="h1")
    s = _settled(ov, ("h1", "h2"))
    for n in ("h1", "h2"):
        assert s[n]["tun_gso_frames"] > 0 and s[n]["tun_gro_merged"] > 0, s[n]
    _assert_no_drops(s["h1"], s["h2"])


@pytest.mark.parametrize("offload, how", [(False, "route"), (True, "route"), (True, "icmp")],
                         ids=["tier1", "offload", "offload-icmp"])
def test_underlay_path_mtu_below_tun_mtu(lab, offload, how):
    """The underlay path to h2 carries only 1400 bytes while the TUN MTU is 1472: full-size inner
    packets need 1500-byte datagrams. The smaller path MTU is either pinned as a route MTU on h1
    or learned the way it is in the field: an ICMP frag-needed (MTU 1400) from a "router" (a
    third namespace) quoting one of h1's outer datagrams - h1's kernel records the PMTU for h2
    (outer DF is set: the socket uses the default IP_PMTUDISC_WANT). Either way h1's kernel
    fragments the outer datagrams (h2 reassembles them) - but refuses UDP_SEGMENT trains whose
    segment is above the path MTU (EMSGSIZE); those are resent singly. TCP (full-size TSO
    segments in equal-size runs = trains) and UDP arrive exactly; nothing is dropped."""
    ov = Overlay(lab, offload=offload)
    h1, h2 = ov.h["h1"], ov.h["h2"]
    if how == "route":
        lab.sh(h1.ns, f"ip route add {h2.ip}/32 dev eth0 mtu 1400")
    else:
        router = lab.add_host("h3")
        p = labmod.run(lab.ns_cmd(router.ns, sys.executable, program("frag_needed.py"), h1.ip, h2.ip, "1400"),
                       check=False)
        assert p.returncode == 0, p.stderr
        ov.wait_for(lambda: _route_mtu(lab, h1.ns, h2.ip) == "1400", "PMTU learned from the ICMP", timeout=5)
    reasm0 = _snmp(lab, ov.h["h2"].ns, "Ip", "ReasmOKs")
    ov.tcp_transfer(4 * MB, seed=54, port=5054)
    r = udp_transfer(ov, 600, seed=55, port=6055)
    assert r["reordered"] == 0, r
    s = _settled(ov, ("h1", "h2"))
    _assert_no_drops(s["h1"], s["h2"])
    # every full-size TCP segment (and large UDP piece) left h1 as two outer fragments,
    # reassembled by h2's kernel: at least one reassembly per full-size TCP segment
    assert _snmp(lab, ov.h["h2"].ns, "Ip", "ReasmOKs") - reasm0 >= 4 * MB // 1448 + 1
    assert s["h1"]["udp_tx_packets"] == s["h2"]["udp_rx_packets"], (s["h1"], s["h2"])
    if offload:
        assert s["h1"]["tun_gso_frames"] > 0, s["h1"]


# ---- 4: IPv4 options ------------------------------------------------------------------------
def test_ipv4_options_cross_unmerged_and_intact(lab):
    """A TCP connection whose packets carry IPv4 options (Record Route, one slot) crosses two
    offload nodes: the sender's TSO superframes with options are split with the options copied
    into every segment, the receiver's GRO passes them unmerged (not one merge), the transfer is
    byte-exact and every inner packet on the wire has the same 8 option bytes and valid
    checksums. ping -R (options on ICMP) works through the path as well."""
    ov = Overlay(lab, offload=True)
    _no_udp_tso(ov, "h1", "h2")
    cap = Capture(ov, "h1", f"udp port {PORT}")
    before = {n: ov.stats(n) for n in ov.h}
    nbytes, seed, port = 3 * MB, 61, 5061
    srv = ov.tcp_sink("h2", port, "optsrv.log")
    rr = "07070400" + "00000000"                # RR, length 7, pointer 4 (empty slot), EOL
    cli = ov.run("h1", "tcp_source.py", LEASE["h2"], str(port), str(nbytes), str(seed), "--ip-options", rr)
    assert cli.returncode == 0, cli.stderr
    srv.wait(60)
    ov.assert_sink_got("optsrv.log", nbytes, seed)
    s = _settled(ov, ("h1", "h2"))
    frames = cap.stop()
    fwd = [f[4] for f in frames if f[0] == _ip(ov.h["h1"].ip)]
    rev = [f[4] for f in frames if f[0] == _ip(ov.h["h2"].ip)]
    assert len(fwd) == s["h1"]["udp_tx_packets"] - before["h1"]["udp_tx_packets"] and len(fwd) > 2000
    # the sender's kernel filled the slot with its source address (pointer 8)
    opt = bytes([7, 7, 8]) + _ip(LEASE["h1"]) + b"\0"
    for inner in fwd:
        assert inner[0] == 0x47 and inner[20:28] == opt, inner[:28].hex()
        assert _check_inner(inner, 1472) == 6
    assert sum(len(i) == 1472 for i in fwd) > 1500                 # full-size segments with options
    rev_opts = {i[20:(i[0] & 15) * 4] for i in rev}
    assert len(rev_opts) == 1 and len(next(iter(rev_opts))) == 8, rev_opts   # the echoed route
    for inner in rev:
        assert _check_inner(inner, 1472) == 6
    # TSO superframes with options were split on h1; nothing merged into h2's TUN
    assert s["h1"]["tun_gso_frames"] - before["h1"]["tun_gso_frames"] > 0, s["h1"]
    assert s["h2"]["tun_gro_merged"] == before["h2"]["tun_gro_merged"], s["h2"]
    assert s["h2"]["tun_tx_packets"] - before["h2"]["tun_tx_packets"] == len(fwd)
    ping = lab.sh(ov.h["h1"].ns, f"ping -R -c 3 -i 0.2 -W 2 {LEASE['h2']}", check=False)
    assert ping.returncode == 0 and "RR:" in ping.stdout, ping.stdout + ping.stderr
    _assert_no_drops(*[ov.stats(n) for n in ov.h])


# ---- 6: hostile input while a transfer runs ---------------------------------------------------
def _expected_drops(plain: list) -> dict:
    """The drop counters the plain datagrams (hex) should move: each as the reference validator
    classifies it, a valid one as unknown_sender (it is not from a peer); nothing else."""
    want = dict.fromkeys(DROP_REASONS, 0)
    names = {ref.PKT_SHORT: "short", ref.PKT_BAD_HEADER: "bad_header", ref.PKT_BAD_LENGTH: "bad_length",
             ref.PKT_OK: "unknown_sender"}
    for h in plain:
        want[names[ref.validate(bytes.fromhex(h))]] += 1
    return want


@pytest.mark.parametrize("workers, duplex", [(1, False), (2, False), (1, True)],
                         ids=["workers1", "workers2", "workers1-duplex"])
def test_hostile_input_during_transfer(lab, workers, duplex):
    """A third namespace floods h2 (offload) with random-length garbage and lying IPv4 headers
    from its own address, and forges datagrams from h1's address whose inner packets lie (bad
    TCP checksums on the running flow's 4-tuple, trailing bytes, fragments, options) while h1
    sends 12 MiB to h2. Every plain datagram is dropped and counted exactly as the reference
    validator classifies it; the forged ones are accepted (they pass every check a forwarder
    can make) and the kernel drops them; the transfer is byte-exact and the node stays up."""
    ov = Pair(lab, cfg={"offload": True, "workers": workers, "duplex": duplex})
    attacker = lab.add_host("h3")
    before, before1 = ov.stats("h2"), ov.stats("h1")
    nbytes, seed, port, cport = 12 * MB, 71, 5071, 40071
    srv = ov.tcp_sink("h2", port, "hsrv.log")
    cli = ov.spawn("h1", "tcp_source.py", LEASE["h2"], str(port), str(nbytes), str(seed), "--pace",
                   "--bind", f"{LEASE['h1']}:{cport}", log="hcli.log")
    flow = json.dumps([LEASE["h1"], LEASE["h2"], cport, port])
    atk = labmod.run(lab.ns_cmd(attacker.ns, sys.executable, program("hostile_flood.py"), ov.h["h2"].ip, str(PORT),
                                ov.h["h1"].ip, "72", "150", flow), check=False, timeout=60)
    assert atk.returncode == 0, atk.stderr
    assert ov.alive() and cli.poll() is None, "the transfer should still be running during the attack"
    cli.wait(60)
    srv.wait(60)
    assert cli.returncode == 0, lab.log("hcli.log")
    ov.assert_sink_got("hsrv.log", nbytes, seed)
    sent = json.loads(atk.stdout)
    st = _settled(ov, ("h1", "h2"))
    s1, s2 = st["h1"], st["h2"]
    delta = {k: s2[k] - before[k] for k in DROP_REASONS}
    exp = _expected_drops(sent["plain"])
    assert delta == exp, (delta, exp)
    assert exp["short"] and exp["bad_header"] and exp["bad_length"] and exp["unknown_sender"], exp
    # exact accounting: h2 received h1's datagrams plus every hostile one; it wrote h1's and
    # the forged ones (accepted: they pass every check a forwarder can make) into its TUN
    peer = s1["udp_tx_packets"] - before1["udp_tx_packets"]
    assert s2["udp_rx_packets"] - before["udp_rx_packets"] == peer + len(sent["plain"]) + len(sent["forged"])
    assert s2["tun_tx_packets"] - before["tun_tx_packets"] == peer + len(sent["forged"])
    assert s2["features"]["tcp_gro"] and s2["tun_gro_merged"] > before["tun_gro_merged"], s2
    assert ov.alive()
    # still forwarding afterwards, both ways
    ov.tcp_transfer(MB, seed=73, port=5073, src="h2", dst="h1")
    assert ov.alive()
