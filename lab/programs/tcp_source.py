"""Send seeded random bytes over TCP: `tcp_source.py IP PORT NBYTES TIMEOUT_S`.

The data is `random.Random(NBYTES)`'s stream, so a run is reproducible. Prints
"<bytes> <sha256 hex> <seconds>" after the receiver has seen the end of the stream.
"""
import hashlib
import random
import socket
import sys
import time

CHUNK = 1 << 16        # bytes per send


def main(ip: str, port: int, nbytes: int, timeout_s: float) -> None:
    rnd, h, sent = random.Random(nbytes), hashlib.sha256(), 0
    c = socket.create_connection((ip, port), timeout=timeout_s)
    t0 = time.monotonic()
    while sent < nbytes:
        b = rnd.randbytes(min(CHUNK, nbytes - sent))
        c.sendall(b)
        h.update(b)
        sent += len(b)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)                 # returns at the receiver's close: every byte has arrived
    print(sent, h.hexdigest(), f"{time.monotonic() - t0:.6f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
