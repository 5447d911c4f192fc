"""Run one Forwarder on its own, configured as flannel's udp backend would be (tests, benchmarks).

    python3 tests/support/node.py '{"bind_ip": "192.0.2.10", "tun_ip": "10.10.16.0",
        "routes": [["10.10.32.0/20", "192.0.2.11"]], "stats": "/tmp/stats.json"}'

Opens flannel%d (IPv6 off on it), gives it <tun_ip>/32, MTU, txqueuelen, link up and a route for
`network` (iproute2, as the
agent does with netlink), adds the routes, starts, and writes the counters as JSON to `stats`
every 100 ms and once more after SIGTERM (with "features", per-queue "queues" counters, offload
"fallbacks" by part, the per-peer counters, "peers": one dict per route, and "unknown_senders").
"tun_prefix" (the lease's prefix length: decapsulated packets must be for tun_ip/tun_prefix),
"workers", "offload", "tun_tso", "udp_gso", "udp_gro", "tcp_gro" are Forwarder.open's switches;
"refuse" lists offload parts whose kernel call is made to fail once (a development build of the
fast path only). With "churn": true a thread replaces the whole table (10k dummy routes plus the
real ones) every `churn_interval` seconds, counting "replacements".
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np

from fastflannel.fastpath import ROUTE_DTYPE, Forwarder

# txqueuelen: the TUN's default 500 overflows under a single TCP stream (each drop a TCP
# retransmit; docs/fastpath.md §"What the control plane must do"); 5000 removed every drop in
# bench/bench_fastpath_iperf.py.
DEFAULTS = {"port": 8285, "tun_prefix": 0, "mtu": 1472, "txqueuelen": 5000, "network": "10.0.0.0/8", "anti_spoof": True,
            "batch": 64, "offload": False, "duplex": False,
            "workers": 1, "tun_tso": None, "udp_gso": None, "udp_gro": None, "tcp_gro": None, "refuse": [],
            "routes": [], "churn": False, "churn_interval": 0.005}
CHURN_ROUTES = 10_000


class Node:
    def __init__(self, cfg: dict):
        self.cfg = dict(DEFAULTS, **cfg)
        self.done = threading.Event()
        self.replacements = 0
        self.fw = Forwarder()

    def setup(self) -> None:
        c, fw = self.cfg, self.fw
        fw.open(tun="flannel%d", bind_ip=c["bind_ip"], port=c["port"], tun_ip=c["tun_ip"],
                tun_prefix=c["tun_prefix"], mtu=c["mtu"], batch=c["batch"], anti_spoof=c["anti_spoof"],
                offload=c["offload"], workers=c["workers"], duplex=c["duplex"], tun_tso=c["tun_tso"],
                udp_gso=c["udp_gso"],
                udp_gro=c["udp_gro"], tcp_gro=c["tcp_gro"], _refuse=tuple(c["refuse"]))
        dev = fw.tun_name
        # flannel's udp backend is IPv4 only. Left on, the kernel's own IPv6 chatter on the TUN
        # (router solicitations, MLD reports) is read and dropped as tun_invalid, which would
        # blur the drop counters the tests compare with exact numbers.
        ipv6 = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
        if os.path.exists(ipv6):
            with open(ipv6, "w") as f:
                f.write("1")
        for cmd in (f"ip addr add {c['tun_ip']}/32 dev {dev}",
                    f"ip link set {dev} mtu {c['mtu']} txqueuelen {c['txqueuelen']} up",
                    f"ip route add {c['network']} dev {dev}"):
            subprocess.run(cmd.split(), check=True, capture_output=True)
        for subnet, peer in c["routes"]:
            fw.add_route(subnet, peer, c["port"])

    def write_stats(self) -> None:
        path = self.cfg["stats"]
        peers = self.fw.peer_stats()
        s = dict(self.fw.stats(), replacements=self.replacements, tun=self.fw.tun_name, port=self.fw.port,
                 features=self.fw.features, queues=self.fw.queue_stats(), fallbacks=self.fw.offload_fallbacks(),
                 peers=[dict(zip(peers.dtype.names, row)) for row in peers.tolist()],
                 unknown_senders=self.fw.unknown_senders())
        with open(path + ".tmp", "w") as f:
            json.dump(s, f)
        os.replace(path + ".tmp", path)

    def churn(self, keep: np.ndarray) -> None:
        tables = []
        for base in (0x0B000000, 0x0C000000):       # two dummy sets, so every swap changes the table
            a = np.zeros(CHURN_ROUTES, dtype=ROUTE_DTYPE)
            a["net"] = base + (np.arange(CHURN_ROUTES, dtype=np.uint32) << 12)
            a["prefix"], a["peer_ip"], a["peer_port"] = 20, 0xC00002FE, self.cfg["port"]
            a[:len(keep)] = keep
            tables.append(a)
        while not self.done.is_set():
            self.fw.replace_routes(tables[self.replacements % 2])
            self.replacements += 1
            self.done.wait(self.cfg["churn_interval"])

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *a: self.done.set())
        signal.signal(signal.SIGINT, lambda *a: self.done.set())
        with self.fw:
            self.setup()
            self.fw.start()
            if self.cfg["churn"]:
                threading.Thread(target=self.churn, args=(self.fw.routes(),), daemon=True).start()
            while not self.done.wait(0.1):
                self.write_stats()
            self.fw.stop()
            self.write_stats()


if __name__ == "__main__":
    Node(json.loads(sys.argv[1])).run()
