"""Accept one TCP connection and report what arrived: `tcp_sink.py IP PORT TIMEOUT_S`.

Prints "listening" once bound, then "<bytes> <sha256 hex>" after the sender closes.
Both the accept and every receive are bounded by TIMEOUT_S seconds.
"""
import hashlib
import socket
import sys

CHUNK = 1 << 16        # bytes per recv


def main(ip: str, port: int, timeout_s: float) -> None:
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)   # IPv4 or IPv6
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(1)
    s.settimeout(timeout_s)
    print("listening", flush=True)
    c, _ = s.accept()
    c.settimeout(timeout_s)
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(CHUNK)
        if not b:
            break
        h.update(b)
        n += len(b)
    print(n, h.hexdigest(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
