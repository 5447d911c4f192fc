"""Datagrams a forwarder must drop and count, sent to TARGET:PORT from this namespace: 5 short,
4 with IP version 6, 3 whose total length exceeds the datagram, 2 valid ones from a sender that
is no peer; then (raw socket, IP_HDRINCL) 2 forged from the peer FORGED with an inner source
outside the peer's subnet, and 1 forged from the peer from another source port with an inner
source inside its subnet (accepted: the check is on addresses only). 17 datagrams in all.

    spoof_attack.py TARGET PORT FORGED      prints "sent"
"""
import socket
import struct
import sys

target, port, forged = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def inner(src, total=60, first=0x45):
    h = struct.pack("!BBHHHBBH4s4s", first, 0, total, 0, 0, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton("10.10.32.0"))
    return h + bytes(total - 20)


def forge(payload, sport, ip_id):
    udp = struct.pack("!HHHH", sport, port, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(payload), ip_id, 0, 64, 17, 0,
                     socket.inet_aton(forged), socket.inet_aton(target))
    return ip + udp + payload


u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    u.sendto(b"\x45" * 10, (target, port))                           # short
for _ in range(4):
    u.sendto(inner("10.10.16.9", first=0x65), (target, port))        # version 6
for _ in range(3):
    u.sendto(inner("10.10.16.9")[:50], (target, port))               # total 60 > 50 bytes
for _ in range(2):
    u.sendto(inner("10.10.16.9"), (target, port))                    # sender is no peer
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(2):
    r.sendto(forge(inner("10.99.0.7"), 40000, 1), (target, 0))       # spoofed inner source
r.sendto(forge(inner("10.10.16.9"), 40001, 2), (target, 0))          # a peer, another port
print("sent")
