"""Control-plane figures: start → subnet.env, new lease → other hosts' tables, the agent's RSS.

    sudo python3 bench/agent_metrics.py [--backend host-gw] [--runs 5]

Two hosts run the daemon; a third one starts `--runs` times (its lease deleted in between, so each
start allocates). For each start we time: process start → subnet.env written, and subnet.env
written → the route to its subnet present in the kernel of h1 (host-gw/vxlan put peers into the
kernel routing table; with udp the route lives in the fast path, so we time the first ping
instead). RSS is VmRSS of each daemon process after it is ready.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scale import rss_mib  # noqa: E402  (bench/scale.py, beside this script)

from fastflannel.lab import Lab, cleanup_stale, read_subnet_env, wait_for  # noqa: E402
from fastflannel.lab.cluster import PREFIX, Cluster, seed_config  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="host-gw", choices=["host-gw", "vxlan", "udp"])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    cleanup_stale("ffmet")
    starts, props, rss = [], [], []
    with Lab(prefix="ffmet") as lab:
        cluster = Cluster(lab, seed_config(args.backend), hosts=("h1", "h2", "h3"))
        for h in ("h1", "h2"):
            cluster.start(h)
        for h in ("h1", "h2"):
            cluster.wait_subnet(h)
        ns1 = cluster.hosts["h1"].ns
        for _ in range(args.runs):
            path = cluster.subnet_file("h3")
            if os.path.exists(path):
                os.unlink(path)
            t0 = time.monotonic()
            p = cluster.start("h3")
            wait_for(lambda path=path: os.path.exists(path), 30, interval=0.005)
            t_env = time.monotonic()
            net = ipaddress.ip_interface(read_subnet_env(path)["FLANNEL_SUBNET"]).network
            if args.backend == "udp":
                cluster.add_containers()
                ok = cluster.ping("h1", "h3", timeout=10)
            else:
                ok = wait_for(lambda net=net: str(net) in lab.sh(ns1, f"ip route show {net}").stdout, 10,
                              interval=0.005)
            t_route = time.monotonic()
            starts.append(t_env - t0)
            props.append(t_route - t_env if ok else float("nan"))
            rss.append(rss_mib(p.pid))
            cluster.stop("h3")
            lab.etcdctl("del", f"{PREFIX}/subnets/{net.network_address}-{net.prefixlen}")
            if args.backend == "udp":
                break   # containers are tied to one subnet; one sample is enough for udp
        rss += [rss_mib(cluster.daemons[h].pid) for h in ("h1", "h2")]
    print(f"backend {args.backend}, {len(starts)} starts")
    print(f"start -> subnet.env: median {statistics.median(starts) * 1000:.0f} ms "
          f"(min {min(starts) * 1000:.0f}, max {max(starts) * 1000:.0f})")
    print(f"subnet.env -> route on another host: median {statistics.median(props) * 1000:.0f} ms "
          f"(max {max(props) * 1000:.0f})")
    print(f"agent RSS: median {statistics.median(rss):.1f} MiB (max {max(rss):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
