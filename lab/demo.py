"""`fastflannel demo`: a whole cluster on one machine, then everything removed again.

A local etcd and N namespace hosts on one underlay bridge each run the daemon with the seed-style
config; a container namespace behind a bridge on each host gets its address from subnet.env (as
`dockerd --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU` would); then the leases are shown and traffic
crosses the overlay between every pair of hosts.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from .cluster import SEED_BACKENDS, Cluster, seed_config
from .netns import Lab, cleanup_stale, have_netns_privileges
from .proc import LabError
from .traffic import tcp_transfer


def _say(msg: str) -> None:
    print(msg, flush=True)


def _observe(cluster: Cluster, host: str) -> bool:
    """What an operator sees on `host` now: `fastflannel status` run there (it asks the daemon's
    status socket beside subnet.env) and the samples of its /metrics page. False if either failed."""
    from fastflannel.agent.status import UnixHTTPConnection
    cmd = [sys.executable, "-m", "fastflannel.agent.cli", "status", "--subnet-file", cluster.subnet_file(host)]
    out = cluster.lab.sh(cluster.hosts[host].ns, " ".join(cmd), check=False)
    _say(f"--- {host}: $ fastflannel status ---\n{out.stdout}{out.stderr}")
    conn = UnixHTTPConnection(os.path.join(cluster.host_dir(host), "fastflannel.sock"), 5.0)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        code, page = resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()
    samples = [line for line in page.splitlines() if line.startswith("fastflannel_")]
    _say(f"--- {host}: /metrics (HTTP {code}, {len(samples)} fastflannel_ samples) ---\n"
         + "\n".join(samples or [page]))
    return out.returncode == 0 and code == 200 and bool(samples)


def run_demo(backend: str, n_hosts: int, mbytes: int, observe: bool = False) -> bool:
    cleanup_stale("ffdemo")
    with Lab(prefix="ffdemo") as lab:
        t0 = time.monotonic()
        hosts = [f"h{i + 1}" for i in range(n_hosts)]
        cfg = seed_config(backend)
        cluster = Cluster(lab, cfg, hosts)
        _say(f"etcd at {lab.etcd_endpoint}; config {cfg}")
        cluster.start_all()
        envs = cluster.wait_all(timeout=60)
        _say(f"{n_hosts} daemons wrote subnet.env in {time.monotonic() - t0:.2f} s")
        for h in hosts:
            e = envs[h]
            _say(f"  {h} ({cluster.hosts[h].ip}): FLANNEL_SUBNET={e['FLANNEL_SUBNET']} "
                 f"FLANNEL_MTU={e['FLANNEL_MTU']}")
        _say("leases in etcd:")
        for key, value in sorted(cluster.leases().items()):
            _say(f"  /coreos.com/network/subnets/{key} = {value}")
        cluster.add_containers()
        ok = True
        for a, b in itertools.permutations(hosts, 2):
            ca, cb = cluster.containers[a], cluster.containers[b]
            reach = cluster.ping(a, b, timeout=15)
            res = tcp_transfer(lab, ca.ns, cb.ns, cb.ip, mbytes << 20) if reach else {"ok": False}
            ok &= bool(reach and res["ok"])
            detail = f"{res['bytes'] >> 20} MiB sha256 ok, {res['mbit_s']:.0f} Mbit/s" if res.get("ok") \
                else "FAILED"
            _say(f"  {a} container {ca.ip} -> {b} container {cb.ip}: ping {'ok' if reach else 'FAILED'}, "
                 f"tcp {detail}")
        if observe:
            ok &= _observe(cluster, hosts[0])
        if not ok:
            for h in hosts:
                _say(f"--- {h} daemon log (tail) ---\n{cluster.log(h)[-1500:]}")
        _say("stopping daemons and removing namespaces")
    _say("demo " + ("passed" if ok else "FAILED"))
    return ok


def main(argv) -> int:
    ap = argparse.ArgumentParser(prog="fastflannel demo", description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=sorted(SEED_BACKENDS), default="udp")
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--mbytes", type=int, default=8, help="TCP transfer size per host pair (MiB)")
    ap.add_argument("--observe", action="store_true",
                    help="after the traffic, print h1's `fastflannel status` and its /metrics samples")
    args = ap.parse_args(argv)
    reason = have_netns_privileges()
    if reason:
        print(f"fastflannel demo: {reason}", file=sys.stderr)
        return 1
    try:
        return 0 if run_demo(args.backend, args.hosts, args.mbytes, args.observe) else 1
    except LabError as e:
        print(f"fastflannel demo: {e}", file=sys.stderr)
        return 1
