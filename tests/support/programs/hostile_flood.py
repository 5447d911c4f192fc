"""Hostile input for a forwarder at TARGET:PORT while a transfer runs through it, ROUNDS rounds:
from this namespace's own address (no peer) random garbage and lying IPv4 headers (total length
beyond the datagram or below the header, IHL < 5, truncated headers); forged from the peer PEER
(raw socket, IP_HDRINCL) inner packets that pass every check a forwarder can make but lie to
the receiver: TCP on the running flow's 4-tuple with bad checksums and odd data offsets,
trailing bytes after the total length, fragments, IP options.

    hostile_flood.py TARGET PORT PEER SEED ROUNDS '[inner src, inner dst, sport, dport]'

Prints {"plain": [hex...], "forged": [hex...]} (every datagram payload sent) as JSON.
"""
import json
import random
import socket
import struct
import sys
import time

target, port, peer, seed, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
flow = json.loads(sys.argv[6])
r = random.Random(seed)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = {"plain": [], "forged": []}


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


def ip4(src, dst, proto, body, tot=None, ihl=5, ver=4, frag=0, ttl=64, opts=b""):
    h = struct.pack("!BBHHHBBH4s4s", ver << 4 | ihl, 0, tot if tot is not None else 20 + len(opts) + len(body),
                    r.randrange(65536), frag, ttl, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + opts
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + body


def plain(b):                              # from this namespace's own address: not a peer
    u.sendto(b, (target, port))
    sent["plain"].append(b.hex())


def forged(inner):                         # outer source = the real peer
    udp = struct.pack("!HHHH", 8285, port, 8 + len(inner), 0)
    raw.sendto(ip4(peer, target, 17, udp + inner), (target, 0))
    sent["forged"].append(inner.hex())


src, dst, sport, dport = flow
for _ in range(rounds):
    n = r.choice([0, 1, 2, 19, 20, 21, 40, 60, r.randrange(1, 1500), r.randrange(1, 1500), r.randrange(1500, 9000)])
    plain(r.randbytes(n))                                                       # random garbage
    body = r.randbytes(r.randrange(0, 200))
    plain(ip4("10.10.16.9", "10.10.32.0", 17, body, tot=20 + len(body) + r.randrange(1, 400)))  # total > datagram
    plain(ip4("10.10.16.9", "10.10.32.0", 17, body, tot=r.randrange(0, 20)))    # total < header
    plain(ip4("10.10.16.9", "10.10.32.0", 6, body, ihl=r.randrange(0, 5)))      # IHL < 5
    plain(ip4("10.10.16.9", "10.10.32.0", 6, body)[:r.randrange(0, 20)])        # truncated header
    # forged from the peer, inner source in its subnet: accepted by the forwarder, and must not
    # disturb the running flow's merges
    seq = r.randrange(1 << 32)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, r.randrange(1 << 32), r.choice([0x50, 0xf0, 0x10, 0x70]),
                      0x10, 65535, r.randrange(1, 65536), 0) + r.randbytes(r.randrange(0, 1400))
    forged(ip4(src, dst, 6, tcp))
    forged(ip4(src, dst, 6, tcp[:30]) + r.randbytes(r.randrange(1, 64)))           # trailing garbage
    forged(ip4(src, dst, 6, tcp[:200], frag=r.choice([0x2000, 0x0010, 0x2020])))   # fragment pieces
    forged(ip4(src, dst, 6, tcp[:100], ihl=6, opts=b"\x01\x01\x01\x00"))          # NOP NOP NOP EOL
    time.sleep(0.002)
print(json.dumps(sent), flush=True)
