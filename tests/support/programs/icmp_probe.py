"""Send one UDP datagram to DST and print, as hex, the first ICMP destination-unreachable
packet that comes back (raw socket, 3 s timeout).

    icmp_probe.py DST
"""
import socket
import sys

raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)   # sees ICMP errors
raw.settimeout(3)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"probe", (sys.argv[1], 9))
while True:
    pkt = raw.recv(2048)
    if pkt[20] == 3:
        print(pkt.hex())
        break
