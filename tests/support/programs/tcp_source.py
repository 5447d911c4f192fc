"""Connect (retrying for 10 s while the path comes up) and send NBYTES seeded random bytes.

    tcp_source.py HOST PORT NBYTES SEED [--pace] [--bind IP:PORT] [--ip-options HEX]

--pace sends 64 KiB every 10 ms (so traffic overlaps something else for its whole length);
--bind fixes the source address and port; --ip-options sets IP_OPTIONS on the socket.
"""
import argparse
import random
import socket
import time

ap = argparse.ArgumentParser()
ap.add_argument("host")
ap.add_argument("port", type=int)
ap.add_argument("nbytes", type=int)
ap.add_argument("seed", type=int)
ap.add_argument("--pace", action="store_true")
ap.add_argument("--bind", default="")
ap.add_argument("--ip-options", default="")
args = ap.parse_args()

data = random.Random(args.seed).randbytes(args.nbytes)
deadline = time.monotonic() + 10
while True:
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.ip_options:
        c.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes.fromhex(args.ip_options))
    if args.bind:
        ip, port = args.bind.rsplit(":", 1)
        c.bind((ip, int(port)))
    try:
        c.settimeout(10)
        c.connect((args.host, args.port))
        break
    except OSError:
        c.close()
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
c.settimeout(60)
if args.pace:
    view = memoryview(data)
    for i in range(0, len(data), 1 << 16):
        c.sendall(view[i:i + (1 << 16)])
        time.sleep(0.01)
else:
    c.sendall(data)
c.close()
