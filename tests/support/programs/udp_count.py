"""A controlled UDP flow for counter tests: N datagrams of SIZE bytes, nothing else.

    udp_count.py recv HOST PORT N TIMEOUT    prints "ready", then "got COUNT BYTES" (exit 1 if short)
    udp_count.py send HOST PORT N SIZE       prints "sent N"; paced (64 at a time) so no buffer overflows

The receiver binds the port, so no ICMP port-unreachable flows back; it sends nothing.
"""
import socket
import sys
import time

role, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if role == "recv":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, port))
    deadline = time.monotonic() + float(sys.argv[5])
    print("ready", flush=True)
    count = nbytes = 0
    while count < n and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            nbytes += len(s.recv(65535))
        except socket.timeout:
            break
        count += 1
    print("got", count, nbytes, flush=True)
    sys.exit(0 if count == n else 1)
size = int(sys.argv[5])
for i in range(n):
    s.sendto(bytes([i & 0xFF]) * size, (host, port))
    if i % 64 == 63:
        time.sleep(0.002)
print("sent", n, flush=True)
