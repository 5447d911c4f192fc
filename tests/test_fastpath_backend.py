"""The udp backend (agent/backends/udp.py) driving the fast path as the daemon does, with the
fast-path switches of the command line: -fastpath-workers, -fastpath-offload, -fastpath-disable.

Each host namespace runs a small driver holding one UdpBackend (setup, add_peer, check every
100 ms, close on SIGTERM) and writing fw.features / stats as JSON; no etcd. Traffic goes only
between addresses inside the namespaces the lab makes, and the lab removes them.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

from test_fastpath_netns import LEASE, MB, Hosts, parallel_transfer

pytestmark = pytest.mark.netns

DRIVER = r"""
import ipaddress, json, logging, os, signal, sys, threading
from types import SimpleNamespace
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
from fastflannel.agent.iface import choose_external_interface
from fastflannel.agent.lease import Lease, LeaseAttrs
from fastflannel.agent.backends.base import BackendOptions
from fastflannel.agent.backends.udp import UdpBackend
from fastflannel.agent.config import parse_config
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
"""


def _start(lab, workers: int, offload: bool, disable: list) -> Hosts:
    hosts = Hosts(lab)
    peer = {"h1": "h2", "h2": "h1"}
    for n, h in hosts.h.items():
        cfg = {"workers": workers, "offload": offload, "disable": disable, "subnet": LEASE[n] + "/20",
               "peer_subnet": LEASE[peer[n]] + "/20", "peer_ip": hosts.h[peer[n]].ip,
               "stats": os.path.join(lab.tmp, f"be-{n}.json")}
        lab.spawn(h.ns, [sys.executable, "-c", DRIVER, json.dumps(cfg)], f"be-{n}.log")
    for n in hosts.h:
        hosts.wait_for(lambda n=n: os.path.exists(os.path.join(lab.tmp, f"be-{n}.json")), f"{n} backend up")
    return hosts


def _stats(lab, n: str) -> dict:
    with open(os.path.join(lab.tmp, f"be-{n}.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("workers, offload, disable", [
    (2, True, ["udp-gso", "tcp-gro"]),
    (1, True, ["tun-tso"]),
    (2, False, []),
], ids=["workers2-offload-no-udp-gso-tcp-gro", "offload-no-tun-tso", "workers2-plain"])
def test_udp_backend_fast_path_switches(lab, workers, offload, disable):
    hosts = _start(lab, workers, offload, disable)
    parallel_transfer(hosts, streams=4, nbytes=2 * MB, seed=31, port=5031)
    for n in hosts.h:
        s = _stats(lab, n)
        want = {p: offload and p.replace("_", "-") not in disable for p in ("tun_tso", "udp_gso", "udp_gro", "tcp_gro")}
        if "tun-tso" in disable:
            want["tcp_gro"] = False
        assert s["features"] == dict(want, workers=workers), s["features"]
        assert len(s["queues"]) == workers and s["send_error"] == s["tun_error"] == 0, s
        assert "udp backend: flannel0 up" in lab.log(f"be-{n}.log")
        assert "refused by the kernel" not in lab.log(f"be-{n}.log")
