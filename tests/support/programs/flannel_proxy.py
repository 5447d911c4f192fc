"""An independent stand-in for flannel's udp proxy (docs/flannel-compat.md §"udp wire format"), one
packet per syscall: TUN flannel0 (IFF_TUN|IFF_NO_PI), UDP :8285, payload = the raw inner packet,
TTL-1 each way, one fixed route. It shares no code with the fast path; the TTL step is the
reference twin's.

    flannel_proxy.py '{"tun_ip": ..., "bind_ip": ..., "route": ["<subnet>/<len>", "<peer ip>"]}'

Prints "ready" once the TUN is up; runs until killed.
"""
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from support import reference as ref  # noqa: E402  (tests/ on the path, as under pytest)

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000

cfg = json.loads(sys.argv[1])
tun = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", b"flannel0", IFF_TUN | IFF_NO_PI))
for cmd in (f"ip addr add {cfg['tun_ip']}/32 dev flannel0", "ip link set flannel0 mtu 1472 up",
            "ip route add 10.0.0.0/8 dev flannel0"):
    subprocess.run(cmd.split(), check=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((cfg["bind_ip"], 8285))
net, plen = cfg["route"][0].split("/")
mask = (0xFFFFFFFF << (32 - int(plen))) & 0xFFFFFFFF
net = int.from_bytes(socket.inet_aton(net), "big")
print("ready", flush=True)
while True:
    r, _, _ = select.select([tun, u], [], [])
    if tun in r:
        pkt = os.read(tun, 65535)
        if len(pkt) >= 20 and pkt[0] >> 4 == 4 and int.from_bytes(pkt[16:20], "big") & mask == net:
            pkt = ref.dec_ttl(pkt)
            if pkt:
                u.sendto(pkt, (cfg["route"][1], 8285))
    if u in r:
        pkt = u.recv(65535)
        if len(pkt) >= 20:
            pkt = ref.dec_ttl(pkt)
            if pkt:
                os.write(tun, pkt)
