"""N TCP connections at once; connection i sends its index byte, then SIZE bytes seeded SEED + i.

    tcp_multi_source.py HOST PORT N SIZE SEED      exits nonzero with the errors if any failed
"""
import random
import socket
import sys
import threading
import time

host, port, n, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
errors = []


def send(i):
    try:
        data = random.Random(seed + i).randbytes(size)
        deadline = time.monotonic() + 10
        while True:
            try:
                c = socket.create_connection((host, port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        c.settimeout(60)
        c.sendall(bytes([i]) + data)
        c.close()
    except Exception as e:      # noqa: BLE001 - reported through the exit status
        errors.append(repr(e))


threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join(90)
if errors:
    sys.exit("; ".join(errors))
