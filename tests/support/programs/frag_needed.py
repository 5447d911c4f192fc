"""Send, as a router on the path would, ICMP destination unreachable / fragmentation needed
(type 3 code 4) with next-hop MTU MTU to SRC, quoting the outer header of a datagram
SRC -> DST, port 8285 -> 8285.

    frag_needed.py SRC DST MTU      prints "sent"
"""
import socket
import struct
import sys


def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff


ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1500, 1, 0x4000, 63, 17, 0, socket.inet_aton(sys.argv[1]),
                 socket.inet_aton(sys.argv[2]))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
quote = ip + struct.pack("!HHHH", 8285, 8285, 1480, 0)
icmp = struct.pack("!BBHHH", 3, 4, 0, 0, int(sys.argv[3])) + quote
icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
r.sendto(icmp, (sys.argv[1], 0))
print("sent")
