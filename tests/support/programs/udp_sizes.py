"""The datagram sizes and payloads of the UDP byte-exactness test (udp_send.py, udp_recv.py and
the test itself load this file).

sizes(seed, n, mtu): n sizes covering 1..65507, the MTU boundaries, inner-fragmenting sizes and
runs of equal sizes (UDP_SEGMENT trains). payload(seed, i, size): datagram i, its index in the
first 4 bytes. frags(size, mtu): the inner IP fragments a datagram of that size becomes.
"""
import random
import struct


def sizes(seed, n, mtu):
    top = mtu - 28                                    # largest unfragmented UDP payload
    frag = (mtu - 20) // 8 * 8                        # payload of a non-last inner fragment
    fixed = [1, 2, 3, 4, 5, 27, 28, 29, 100, top - 1, top, top + 1, top + 2, mtu - 20, mtu, mtu + 1,
             2 * frag - 8, 2 * frag - 7, 3000, 4096, 8000, 16384, 32768, 65507, 1]
    runs = [1000] * 48 + [top] * 48 + [3000] * 24 + [9000] * 8 + [200] * 64
    r = random.Random(seed)
    rest = [r.randint(1, top) if r.random() < 0.92 else r.randint(top + 1, 12000)
            for _ in range(n - len(fixed) - len(runs))]
    return (fixed + runs + rest)[:n]


def payload(seed, i, size):
    b = random.Random(seed * 1000003 + i).randbytes(size)
    return struct.pack("!I", i) + b[4:] if size >= 4 else b


def frags(size, mtu):
    """As __ip_append_data cuts a datagram: 8-byte-aligned pieces, the last up to mtu - 20 bytes."""
    left, each, n = size + 8, (mtu - 20) // 8 * 8, 1
    while left > mtu - 20:
        left, n = left - each, n + 1
    return n
