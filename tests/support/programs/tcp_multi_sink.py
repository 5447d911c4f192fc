"""Accept N TCP connections at once; each starts with a one-byte index. Print, sorted by index,
"<index> <bytes> <sha256 hex>" of what followed it.

    tcp_multi_sink.py HOST PORT N      prints "listening" first
"""
import hashlib
import socket
import sys
import threading

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
s.settimeout(60)
n = int(sys.argv[3])
out = {}
print("listening", flush=True)


def serve(c):
    c.settimeout(60)
    idx = int.from_bytes(c.recv(1, socket.MSG_WAITALL), "big")
    h, k = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        h.update(b)
        k += len(b)
    out[idx] = (k, h.hexdigest())


threads = []
for _ in range(n):
    c, _ = s.accept()
    t = threading.Thread(target=serve, args=(c,))
    t.start()
    threads.append(t)
for t in threads:
    t.join(90)
for i in sorted(out):
    print(i, *out[i], flush=True)
