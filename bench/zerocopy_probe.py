"""Would MSG_ZEROCOPY pay on the UDP GSO send path here? Ask the kernel.

    sudo .venv/bin/python3 bench/zerocopy_probe.py [--trains 200]

Makes two namespaces joined by a veth pair (the e2e lab's underlay is veth + bridge), sends
UDP_SEGMENT trains of 40 × 1472 bytes with MSG_ZEROCOPY from one to a socket in the other, and
reads the completions from the error queue: the kernel sets SO_EE_CODE_ZEROCOPY_COPIED on a
completion whose pages it had to copy after all (a zerocopy skb delivered to a local socket is
copied in softirq, skb_orphan_frags_rx). If every train is reported copied, MSG_ZEROCOPY only
adds the pinning and the notifications: docs/fastpath.md §"Issue 15: against kernel VXLAN".
Deletes its namespaces whatever happens.
"""
from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import time

SO_ZEROCOPY, MSG_ZEROCOPY, UDP_SEGMENT = 60, 0x4000000, 103
SO_EE_ORIGIN_ZEROCOPY, SO_EE_CODE_ZEROCOPY_COPIED = 5, 1
SEG_BYTES, SEGS = 1472, 40
SRC, DST, PORT = "192.0.2.201", "192.0.2.202", 9999     # TEST-NET-1, inside our namespaces only


def sender(trains: int) -> int:
    """In the sending namespace: send, collect completions (bounded: 5 s); print the tally."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    payload = b"x" * (SEG_BYTES * SEGS)
    for _ in range(trains):
        s.sendmsg([payload], [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("H", SEG_BYTES))],
                  MSG_ZEROCOPY, (DST, PORT))
    done = copied = 0
    deadline = time.monotonic() + 5
    while done < trains and time.monotonic() < deadline:
        try:
            _, anc, _, _ = s.recvmsg(0, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        for _lvl, _typ, data in anc:
            _err, origin, _t, code, _p, lo, hi = struct.unpack("IBBBBII", data[:16])
            if origin == SO_EE_ORIGIN_ZEROCOPY:
                done += hi - lo + 1
                copied += (hi - lo + 1) if code & SO_EE_CODE_ZEROCOPY_COPIED else 0
    print(f"trains {trains}, completions {done}, reported copied by the kernel {copied}")
    return 0 if done == trains else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trains", type=int, default=200)
    ap.add_argument("--sender", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sender:
        return sender(args.trains)
    p = f"ffzc{os.getpid()}"
    a, b = p + "a", p + "b"
    sink = None
    try:
        for cmd in (f"netns add {a}", f"netns add {b}",
                    f"link add {p}x netns {a} type veth peer name {p}y netns {b}",
                    f"-n {a} addr add {SRC}/24 dev {p}x", f"-n {b} addr add {DST}/24 dev {p}y",
                    f"-n {a} link set {p}x up", f"-n {b} link set {p}y up"):
            subprocess.run(["ip", *cmd.split()], check=True)
        sink = subprocess.Popen(["ip", "netns", "exec", b, "timeout", "10", sys.executable, "-c",
                                 f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                 f"s.bind(('{DST}', {PORT})); s.settimeout(2)\n"
                                 "while True: s.recv(65536)"], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        return subprocess.run(["ip", "netns", "exec", a, "timeout", "15", sys.executable,
                               os.path.abspath(__file__), "--sender", "--trains", str(args.trains)]).returncode
    finally:
        if sink:
            sink.kill()
            sink.wait()
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
