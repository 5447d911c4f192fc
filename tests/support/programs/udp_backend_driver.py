"""One udp backend (agent/backends/udp.py) driven as the daemon drives it, without etcd: set up
for SUBNET on eth0, one peer, check() every 100 ms, close on SIGTERM. Writes the backend's stats
with fw.features and the per-queue counters as JSON to STATS every 100 ms; logs to stderr.

    udp_backend_driver.py '{"workers": N, "offload": bool, "disable": [...], "subnet": ...,
                            "peer_subnet": ..., "peer_ip": ..., "stats": PATH}'
"""
import ipaddress
import json
import logging
import os
import signal
import sys
import threading

from fastflannel.agent.backends.base import BackendOptions
from fastflannel.agent.backends.udp import UdpBackend
from fastflannel.agent.config import parse_config
from fastflannel.agent.iface import choose_external_interface
from fastflannel.agent.lease import Lease, LeaseAttrs

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
cfg = json.loads(sys.argv[1])
ext = choose_external_interface(["eth0"], [], None, None)
net_cfg = parse_config('{"Network": "10.0.0.0/8", "Backend": {"Type": "udp"}}')
be = UdpBackend(ext, net_cfg, BackendOptions(workers=cfg["workers"], offload=cfg["offload"],
                                             disable=tuple(cfg["disable"])))
be.setup(Lease(ipaddress.ip_network(cfg["subnet"]), LeaseAttrs(ext.ext_addr)), net_cfg)
be.add_peer(Lease(ipaddress.ip_network(cfg["peer_subnet"]), LeaseAttrs(ipaddress.ip_address(cfg["peer_ip"]))))
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())


def dump():
    s = dict(be.stats(), features=be.fw.features, queues=be.fw.queue_stats())
    with open(cfg["stats"] + ".tmp", "w") as f:
        json.dump(s, f)
    os.replace(cfg["stats"] + ".tmp", cfg["stats"])


while not done.wait(0.1):
    be.check()
    dump()
be.close()
