"""Receive the datagrams of udp_send.py on PORT (flow 0) and PORT+1 (flow 1), a window at a
time, and ack each window to the sender. Each window must hold exactly the datagrams sent.

    udp_recv.py HOST PORT N SEED MTU WINDOW

Prints "ready", then "ok N BYTES REORDERED IN_CLASS" (REORDERED: windows whose per-flow order
differed; IN_CLASS: those where it differed among the fragmented or among the whole datagrams)
or TIMEOUT / MISMATCH / EXTRA and exits 1.
"""
import os
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from udp_sizes import payload, sizes  # noqa: E402

host, port, n, seed, mtu, window = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7])
SO_RCVBUFFORCE = 33
socks = []
for f in (0, 1):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    s.bind((host, port + f))
    socks.append(s)
sz = sizes(seed, n, mtu)
print("ready", flush=True)
deadline = time.monotonic() + 40
pos = nbytes = reordered = in_class = 0
ack_to = None
while pos < n:
    end = min(n, pos + window)
    want = {f: [payload(seed, i, sz[i]) for i in range(pos, end) if i % 2 == f] for f in (0, 1)}
    got = {0: [], 1: []}
    while len(got[0]) + len(got[1]) < end - pos:
        if time.monotonic() > deadline:
            print("TIMEOUT at", pos, {f: len(g) for f, g in got.items()}, flush=True)
            sys.exit(1)
        for s in select.select(socks, [], [], 0.5)[0]:
            d, addr = s.recvfrom(65535)
            f = socks.index(s)
            if f == 0:
                ack_to = addr
            got[f].append(d)
    for f in (0, 1):
        if got[f] != want[f]:
            if sorted(got[f]) != sorted(want[f]):
                print("MISMATCH at", pos, "flow", f, [len(x) for x in got[f]], [len(x) for x in want[f]],
                      flush=True)
                sys.exit(1)
            reordered += 1
            for frag in (False, True):     # fragmented and whole datagrams, each class on its own
                if [d for d in got[f] if (len(d) + 28 > mtu) == frag] != \
                        [d for d in want[f] if (len(d) + 28 > mtu) == frag]:
                    in_class += 1
        nbytes += sum(map(len, got[f]))
    pos = end
    socks[0].sendto(struct.pack("!I", pos), ack_to)
extra = select.select(socks, [], [], 0.5)[0]
print("ok" if not extra else "EXTRA", n, nbytes, reordered, in_class, flush=True)
