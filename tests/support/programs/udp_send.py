"""Send the datagrams of udp_sizes.py to HOST: even ones to PORT, odd ones to PORT+1, a window
at a time, waiting for udp_recv.py's ack of each window.

    udp_send.py HOST PORT N SEED MTU WINDOW      prints "sent N"; exits nonzero on a lost ack
"""
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from udp_sizes import payload, sizes  # noqa: E402

host, port, n, seed, mtu, window = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7])
socks = []
for f in (0, 1):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port + f))
    socks.append(s)
socks[0].settimeout(5)
sz = sizes(seed, n, mtu)
pos = 0
while pos < n:
    end = min(n, pos + window)
    for i in range(pos, end):
        socks[i % 2].send(payload(seed, i, sz[i]))
    while True:
        try:
            a = struct.unpack("!I", socks[0].recv(16))[0]
        except socket.timeout:
            sys.exit(f"no ack for {pos}..{end}")
        if a == end:
            break
        if a > end:
            sys.exit(f"ack {a} beyond {end}")
    pos = end
print("sent", n, flush=True)
