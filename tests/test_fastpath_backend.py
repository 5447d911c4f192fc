"""The udp backend (agent/backends/udp.py) driving the fast path as the daemon does, with the
fast-path switches of the command line: -fastpath-workers, -fastpath-offload, -fastpath-disable.

Each host namespace runs a small driver (support/programs/udp_backend_driver.py) holding one
UdpBackend (setup, add_peer, check every 100 ms, close on SIGTERM) and writing fw.features /
stats as JSON; no etcd. Traffic goes only between addresses inside the namespaces the lab
makes, and the lab removes them.
"""
from __future__ import annotations

import json
import os

import pytest

from support.overlay import LEASE, MB, Hosts, parallel_transfer

pytestmark = pytest.mark.netns


def _start(lab, workers: int, offload: bool, disable: list) -> Hosts:
    hosts = Hosts(lab)
    peer = {"h1": "h2", "h2": "h1"}
    for n in hosts.h:
        cfg = {"workers": workers, "offload": offload, "disable": disable, "subnet": LEASE[n] + "/20",
               "peer_subnet": LEASE[peer[n]] + "/20", "peer_ip": hosts.h[peer[n]].ip,
               "stats": os.path.join(lab.tmp, f"be-{n}.json")}
        hosts.spawn(n, "udp_backend_driver.py", json.dumps(cfg), log=f"be-{n}.log")
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
