"""Pure-Python twin of the C fast path's route table and packet transforms.

Deliberately naive (a dict per prefix length, byte-by-byte checksums) so that it is obviously
right; tests/test_fastpath_table.py compares it with the C code on random inputs.
"""
from __future__ import annotations

import struct
from typing import Dict, List, Optional, Tuple

PKT_OK, PKT_SHORT, PKT_BAD_HEADER, PKT_BAD_LENGTH = 0, 1, 2, 3
ICMP_TTL = 8                     # flannel proxy_amd64.c
IPPROTO_ICMP = 1


def prefix_mask(prefix: int) -> int:
    return 0 if prefix == 0 else (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


class RouteTable:
    """subnet (net, prefix) -> (peer_ip, peer_port); longest prefix among the lengths present."""

    def __init__(self) -> None:
        self._by_len: Dict[int, Dict[int, Tuple[int, int]]] = {}

    def __len__(self) -> int:
        return sum(len(d) for d in self._by_len.values())

    def insert(self, net: int, prefix: int, peer_ip: int, peer_port: int) -> None:
        if not 0 <= prefix <= 32:
            raise ValueError("prefix out of range")
        self._by_len.setdefault(prefix, {})[net & prefix_mask(prefix)] = (peer_ip, peer_port)

    def remove(self, net: int, prefix: int) -> None:
        d = self._by_len.get(prefix, {})
        del d[net & prefix_mask(prefix)]          # KeyError when absent, as the C twin
        if not d:
            del self._by_len[prefix]

    def lookup(self, dst: int) -> Optional[Tuple[int, int]]:
        for prefix in sorted(self._by_len, reverse=True):
            hit = self._by_len[prefix].get(dst & prefix_mask(prefix))
            if hit is not None:
                return hit
        return None

    def has_peer(self, ip: int) -> bool:
        return ip != 0 and any(p == ip for d in self._by_len.values() for p, _ in d.values())

    def routes(self) -> List[Tuple[int, int, int, int]]:
        return sorted((net, prefix, ip, port) for prefix, d in self._by_len.items()
                      for net, (ip, port) in d.items())


def validate(pkt: bytes) -> int:
    """Verdict for a raw IPv4 packet (the rules of ff_ipv4_validate)."""
    if len(pkt) < 20:
        return PKT_SHORT
    ihl = (pkt[0] & 0x0F) * 4
    if pkt[0] >> 4 != 4 or ihl < 20 or ihl > len(pkt):
        return PKT_BAD_HEADER
    total = struct.unpack_from("!H", pkt, 2)[0]
    if total < ihl or total > len(pkt):
        return PKT_BAD_LENGTH
    return PKT_OK


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def dec_ttl(pkt: bytes) -> Optional[bytes]:
    """TTL-1 with the header checksum recomputed in full; None when the TTL would reach 0.

    The C code patches the checksum incrementally (RFC 1624); for a header whose checksum was
    right both give the same bytes."""
    if pkt[8] <= 1:
        return None
    b = bytearray(pkt)
    b[8] -= 1
    ihl = (b[0] & 0x0F) * 4
    b[10:12] = b"\0\0"
    struct.pack_into("!H", b, 10, checksum(bytes(b[:ihl])))
    return bytes(b)


def icmp_net_unreach(pkt: bytes, tun_ip: int) -> Optional[bytes]:
    """flannel's ICMP type 3 code 0 reply for a valid packet, or None when none is due."""
    if validate(pkt) != PKT_OK:
        raise ValueError("not a valid IPv4 packet")
    frag = struct.unpack_from("!H", pkt, 6)[0]
    src, dst = pkt[12], struct.unpack_from("!I", pkt, 16)[0]
    # RFC 1812 4.3.2.7: not about ICMP, later fragments, packets to multicast/limited broadcast,
    # or from a source that is no single host (0/8, loopback, multicast, class E, broadcast)
    if pkt[9] == IPPROTO_ICMP or frag & 0x1FFF or src in (0, 127) or src >= 224 \
            or 224 <= dst >> 24 < 240 or dst == 0xFFFFFFFF:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    quote = pkt[:min(ihl + 8, struct.unpack_from("!H", pkt, 2)[0])]
    total = 28 + len(quote)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, ICMP_TTL, IPPROTO_ICMP, 0,
                               tun_ip.to_bytes(4, "big"), pkt[12:16]))
    struct.pack_into("!H", ip, 10, checksum(bytes(ip)))
    icmp = bytearray(struct.pack("!BBHI", 3, 0, 0, 0) + quote)
    struct.pack_into("!H", icmp, 2, checksum(bytes(icmp)))
    return bytes(ip + icmp)
