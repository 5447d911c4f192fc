"""Write the seed corpus of the libFuzzer targets (tests/fuzz/corpus/<target>/): valid packets
of every kind each target parses, and the interesting invalid ones next to them. Deterministic,
so rerunning it reproduces the committed files:

    python3 tests/fuzz/make_corpus.py            # (re)writes tests/fuzz/corpus/

Input formats are the targets' own (see each fuzz_*.c): fuzz_accept <sender, options, packet>,
fuzz_icmp <packet>, fuzz_gso <virtio_net_hdr (10 B), chunk, frame>, fuzz_gro <flags, then
(u16 length, packet)...>. Crashers found by fuzzing are added by hand as crash-<what>.
"""
from __future__ import annotations

import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from support.reference import checksum as csum  # noqa: E402  (RFC 1071, the tests' one copy)

PEER_A_SRC, OUR_DST = "10.10.16.5", "10.10.32.7"     # fuzz_accept's table: A owns 10.10.16.0/20
TCP, UDP, ICMP = 6, 17, 1
NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_UDP_L4, GSO_ECN = 1, 0, 1, 5, 0x80


def ip(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def ipv4(src: str, dst: str, proto: int, l4: bytes, ttl: int = 64, ident: int = 1, frag: int = 0x4000,
         tos: int = 0, opts: bytes = b"") -> bytes:
    ihl = 5 + len(opts) // 4
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 4 * ihl + len(l4), ident, frag, ttl, proto, 0,
                              ip(src), ip(dst)) + opts)
    struct.pack_into("!H", h, 10, csum(bytes(h)))
    return bytes(h) + l4


def l4sum(src: str, dst: str, proto: int, seg: bytes, at: int, partial: bool = False) -> bytes:
    pseudo = ip(src) + ip(dst) + struct.pack("!BBH", 0, proto, len(seg))
    seg = bytearray(seg)
    if partial:      # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum
        struct.pack_into("!H", seg, at, ~csum(pseudo) & 0xFFFF)
    else:
        struct.pack_into("!H", seg, at, csum(pseudo + bytes(seg)))
    return bytes(seg)


def tcp(src: str, dst: str, payload: bytes, seq: int = 1000, ack: int = 5000, flags: int = 0x10, win: int = 501,
        opts: bytes = b"", sport: int = 40000, dport: int = 5201, partial: bool = False) -> bytes:
    h = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, flags, win, 0, 0) + opts
    return l4sum(src, dst, TCP, h + payload, 16, partial)


def udp(src: str, dst: str, payload: bytes, sport: int = 4433, dport: int = 8472, partial: bool = False) -> bytes:
    return l4sum(src, dst, UDP, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload, 6, partial)


def vnet(flags: int, gso_type: int, gso_size: int = 0, csum_start: int = 20, csum_offset: int = 16,
         hdr_len: int = 0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def packet(src: str, dst: str, kind: str = "udp", n: int = 64, **kw) -> bytes:
    data = bytes(random.Random(n).randrange(256) for _ in range(n))
    if kind == "tcp":
        return ipv4(src, dst, TCP, tcp(src, dst, data), **kw)
    if kind == "icmp":
        return ipv4(src, dst, ICMP, struct.pack("!BBHI", 8, 0, 0, 1) + data, **kw)
    return ipv4(src, dst, UDP, udp(src, dst, data), **kw)


TS = b"\x01\x01\x08\x0a" + struct.pack("!II", 100, 200)     # NOP NOP timestamps


def accept_seeds() -> dict:
    good = packet(PEER_A_SRC, OUR_DST)
    seeds = {"ok-udp": good, "ok-tcp": packet(PEER_A_SRC, OUR_DST, "tcp", 1400),
             "ok-tun-addr": packet(PEER_A_SRC, "10.10.32.0"), "loopback": packet(PEER_A_SRC, "127.0.0.1"),
             "metadata": packet(PEER_A_SRC, "169.254.169.254"), "multicast": packet(PEER_A_SRC, "224.0.0.251"),
             "bcast": packet(PEER_A_SRC, "255.255.255.255"), "subnet-bcast": packet(PEER_A_SRC, "10.10.47.255"),
             "foreign": packet(PEER_A_SRC, "10.10.48.1"), "spoofed": packet("10.10.48.5", OUR_DST),
             "ttl1": packet(PEER_A_SRC, OUR_DST, ttl=1), "options": packet(PEER_A_SRC, OUR_DST, opts=b"\x01" * 8),
             "short": good[:19], "bad-version": b"\x65" + good[1:], "bad-length": good[:-10],
             "ihl-past-end": b"\x4f" + good[1:30], "empty": b""}
    out = {}
    for name, pkt in seeds.items():
        for sender, opts in ((0, 3), (1, 3), (2, 1), (0, 0), (0, 1)):
            if opts != 3 and not name.startswith(("ok-udp", "loopback", "foreign")):
                continue
            out[f"{name}-s{sender}-o{opts}"] = bytes([sender, opts]) + pkt
    return out


def icmp_seeds() -> dict:
    a, b = "10.10.16.5", "10.10.48.7"
    return {"udp": packet(a, b), "tcp": packet(a, b, "tcp", 100), "icmp": packet(a, b, "icmp"),
            "first-frag": packet(a, b, frag=0x2000), "later-frag": packet(a, b, frag=0x0010),
            "options": packet(a, b, opts=b"\x01" * 40), "short-total": packet(a, b, n=2),
            "src-zero": packet("0.0.0.0", b), "src-loopback": packet("127.0.0.1", b),
            "src-multicast": packet("224.0.0.1", b), "src-classe": packet("240.0.0.1", b),
            "src-bcast": packet("255.255.255.255", b), "dst-multicast": packet(a, "239.1.2.3"),
            "dst-bcast": packet(a, "255.255.255.255"), "truncated": packet(a, b)[:30], "tiny": b"\x45" * 4}


def tso(gso: int, paylen: int, opts: bytes = b"", flags: int = 0x18, vflags: int = NEEDS_CSUM,
        gso_type: int = GSO_TCPV4, chunk: int = 7, **kw) -> bytes:
    a, b = "10.10.16.5", "10.10.32.7"
    data = bytes(random.Random(paylen).randrange(256) for _ in range(paylen))
    frame = ipv4(a, b, TCP, tcp(a, b, data, flags=flags, opts=opts, partial=True))
    hdrl = 40 + len(opts)
    return vnet(vflags, gso_type, gso, 20, kw.get("csum_offset", 16), kw.get("hdr_len", hdrl)) + bytes([chunk]) + frame


def gso_seeds() -> dict:
    a, b = "10.10.16.5", "10.10.32.7"
    data = bytes(range(200))
    udp_partial = ipv4(a, b, UDP, udp(a, b, data, partial=True))
    tcp_partial = ipv4(a, b, TCP, tcp(a, b, data, partial=True))
    return {"tso-1448": tso(1448, 20000), "tso-500-131segs": tso(500, 65535 - 52, TS),
            "tso-400": tso(400, 30000, chunk=63), "tso-48": tso(48, 5000, chunk=1), "tso-ts": tso(1448, 9000, TS),
            "tso-fin": tso(1000, 3001, flags=0x19), "tso-cwr": tso(1000, 3001, flags=0x90),
            "tso-lying-hdrlen": tso(1448, 5000, hdr_len=5000), "tso-gso0": tso(0, 5000),
            "tso-no-csum-flag": tso(1448, 5000, vflags=0), "tso-ecn": tso(1448, 5000, gso_type=GSO_TCPV4 | GSO_ECN),
            "uso": tso(1400, 5000, gso_type=GSO_UDP_L4), "tso-bad-offset": tso(1448, 5000, csum_offset=6),
            "none-udp": vnet(NEEDS_CSUM, GSO_NONE, 0, 20, 6) + b"\x01" + udp_partial,
            "none-tcp": vnet(NEEDS_CSUM, GSO_NONE, 0, 20, 16) + b"\x01" + tcp_partial,
            "none-plain": vnet(0, GSO_NONE) + b"\x01" + packet(a, b),
            "none-ipcsum": vnet(NEEDS_CSUM, GSO_NONE, 0, 0, 10) + b"\x01" + tcp_partial,
            "none-past-end": vnet(NEEDS_CSUM, GSO_NONE, 0, 0xFFFF, 0xFFFF) + b"\x01" + tcp_partial,
            "none-frag": vnet(NEEDS_CSUM, GSO_NONE, 0, 20, 6) + b"\x01" + packet(a, b, frag=0x2000),
            "ipv6ish": vnet(0, GSO_TCPV4, 1000) + b"\x01" + b"\x60" + bytes(60)}


def flow(n: int, size: int = 1000, seq: int = 1000, ident: int = 1, win=None, df: bool = True, fixed: bool = False,
         psh_at: int = -1, sport: int = 40000, src: str = "10.10.16.5", opts: bytes = b"") -> list:
    a, b = src, "10.10.32.7"
    out = []
    for i in range(n):
        w = win[i] if win else 501
        seg = tcp(a, b, bytes([i]) * size, seq=seq + i * size, flags=0x18 if i == psh_at else 0x10, win=w,
                  sport=sport, opts=opts)
        out.append(ipv4(a, b, TCP, seg, ident=ident if fixed else ident + i, frag=0x4000 if df else 0))
    return out


def gro_input(pkts: list, flags: int = 0) -> bytes:
    return bytes([flags]) + b"".join(struct.pack("!H", len(p)) + p for p in pkts)


def gro_seeds() -> dict:
    a, b = "10.10.16.5", "10.10.32.7"
    f1, f2 = flow(8, sport=40000), flow(8, sport=40001, seq=9000)
    frag = packet(a, b, frag=0x2000)
    mixed = [p for pair in zip(f1, f2) for p in pair]
    return {
        "flow8": gro_input(f1),
        "flow8-ts": gro_input(flow(8, opts=TS)),
        "two-flows": gro_input(mixed),
        "window-update": gro_input(flow(3, win=[501, 9999, 9999])),
        "fixed-id": gro_input(flow(6, fixed=True)),
        "fixed-id-no-df": gro_input(flow(4, fixed=True, df=False)),
        "id-jump": gro_input(flow(3) + flow(3, ident=50)),
        "psh-middle": gro_input(flow(6, psh_at=2)),
        "short-middle": gro_input(f1[:3] + flow(1, size=10) + f1[3:]),
        "frag-among": gro_input(f1[:4] + [frag] + f1[4:]),
        "udp": gro_input([packet(a, b) for _ in range(4)]),
        "kill-switch": gro_input(f1, 0x80),
        "max-size": gro_input(flow(3, size=32000)),
        "bad-csum": gro_input(f1[:2] + [f1[2][:-1] + bytes([f1[2][-1] ^ 1])] + f1[3:]),
        "trailing": gro_input([p + b"\0" for p in f1[:3]]),
        "many-flows": gro_input([q for s in range(16) for q in flow(2, size=100, sport=41000 + s)]),
        "hosts-frag": gro_input([q for s in range(8) for q in flow(2, src=f"10.10.16.{s + 1}") + [frag]]),
        "tiny": gro_input([b"\x45", b"", b"\x45" + bytes(18)]),
    }


TARGETS = {"fuzz_accept": accept_seeds, "fuzz_icmp": icmp_seeds, "fuzz_gso": gso_seeds, "fuzz_gro": gro_seeds}


def main() -> int:
    for target, make in TARGETS.items():
        d = os.path.join(HERE, "corpus", target)
        os.makedirs(d, exist_ok=True)
        for name in os.listdir(d):
            if not name.startswith("crash-"):
                os.remove(os.path.join(d, name))
        for name, data in make().items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(os.listdir(d))} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
