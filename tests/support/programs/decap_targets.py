"""Datagrams from this host (a peer) to TARGET:PORT, each one inner IPv4/UDP packet from SRC (in
this peer's subnet, so anti-spoofing lets it through) to one of DST...: which of them the
receiving forwarder writes into its TUN is what the test looks at.

    decap_targets.py TARGET PORT SRC DST...      prints "sent N"
"""
import socket
import struct
import sys

target, port, src, dsts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]


def checksum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for dst in dsts:
    payload = struct.pack("!HHHH", 40000, 9, 16, 0) + b"decap-ok"
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, 17, 0,
                               socket.inet_aton(src), socket.inet_aton(dst)))
    struct.pack_into("!H", ip, 10, checksum(bytes(ip)))
    u.sendto(bytes(ip) + payload, (target, port))
print("sent", len(dsts))
