"""The cost of a /metrics scrape (and a /status) of a real daemon, with 0 and with N peers.

    sudo .venv/bin/python3 bench/metrics_scrape.py [--peers 1000] [--scrapes 200]

One lab host runs the daemon (udp backend, real etcd, real fast path) in a namespace. It is
scraped first with no peer, then after N peer leases (subnets of the seed network, PublicIPs in
198.18.0.0/15, the benchmarking range: nothing is ever sent to them) were put into etcd and
became fast-path routes. Each scrape is one HTTP GET over the daemon's status socket, timed by
the client: the collector, the fast path's per-peer read, the serialization and the HTTP round
trip together. Reports median / p90 / max in ms and the ratio to the no-peer scrape of the same
run; writes bench/results/metrics_scrape.md. The goal: well under 10 ms at 1,000 peers.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from fastflannel.lab import Lab, cleanup_stale, wait_for  # noqa: E402
from fastflannel.lab import run as run_cmd  # noqa: E402
from fastflannel.lab.cluster import PREFIX, Cluster, seed_config  # noqa: E402
from support import scrape  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Puts the leases from inside the hub namespace, where etcd listens (one client, one process).
PUT_LEASES = """
import sys, etcd3
c = etcd3.client(host="192.0.2.1", port=2379)
prefix, n, skip = sys.argv[1], int(sys.argv[2]), set(sys.argv[3:])
base, done, i = 0x0A0A0000, 0, 0                      # 10.10.0.0, /20 apart, as the seed config
while done < n:
    net = base + (i << 12)
    i += 1
    key = "%d.%d.%d.%d-20" % (net >> 24, net >> 16 & 255, net >> 8 & 255, net & 255)
    if key in skip:
        continue
    ip = 0xC6120000 + done + 1                         # 198.18.0.0/15: benchmarking, never sent to
    c.put(prefix + "/subnets/" + key, '{"PublicIP":"%d.%d.%d.%d","PublicIPv6":null}' % (
        ip >> 24, ip >> 16 & 255, ip >> 8 & 255, ip & 255))
    done += 1
print("put", done)
"""


def timed(sock: str, path: str, n: int) -> dict:
    ms, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        code, _, body = scrape.get(sock, path)
        ms.append((time.perf_counter() - t0) * 1e3)
        assert code == 200, (path, code)
        size = len(body)
    ms.sort()
    return {"median": statistics.median(ms), "p90": ms[int(0.9 * (len(ms) - 1))], "max": ms[-1], "bytes": size}


def peers_now(sock: str) -> int:
    series, _ = scrape.metrics(sock)
    return int(scrape.value(series, "fastflannel_peers"))


def run(peers: int, scrapes: int) -> dict:
    cleanup_stale("ffscr")
    with Lab(prefix="ffscr") as lab:
        cluster = Cluster(lab, seed_config("udp"), hosts=("h1",))
        cluster.start("h1")
        env = cluster.wait_subnet("h1")
        sock = os.path.join(cluster.host_dir("h1"), "fastflannel.sock")
        own = str(ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network).replace("/", "-")
        timed(sock, "/metrics", 5)                     # the first scrape imports prometheus_client
        res = {"0": {"metrics": timed(sock, "/metrics", scrapes), "status": timed(sock, "/status", scrapes)}}
        t0 = time.monotonic()
        script = os.path.join(lab.tmp, "put_leases.py")
        with open(script, "w") as f:
            f.write(PUT_LEASES)
        out = run_cmd(lab.ns_cmd(lab.hub, sys.executable, script, PREFIX, str(peers), own), timeout=300)
        assert out.stdout.split() == ["put", str(peers)], out.stdout
        if not wait_for(lambda: peers_now(sock) == peers, 120, interval=0.5):
            raise SystemExit(f"the daemon did not get {peers} peers:\n{cluster.log('h1')[-2000:]}")
        print(f"{peers} leases put and routed in {time.monotonic() - t0:.1f} s", flush=True)
        res[str(peers)] = {"metrics": timed(sock, "/metrics", scrapes), "status": timed(sock, "/status", scrapes)}
        return res


def report(res: dict, peers: int, scrapes: int) -> str:
    base = res["0"]
    lines = [f"# /metrics and /status of one daemon, {scrapes} scrapes each\n",
             f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs; "
             f"`bench/metrics_scrape.py --peers {peers} --scrapes {scrapes}`. "
             "Client-timed HTTP GET over the status socket (ms).\n",
             "| peers | page | median ms | p90 ms | max ms | × no peers (median) | bytes |",
             "|---|---|---|---|---|---|---|"]
    for n, r in res.items():
        for page in ("metrics", "status"):
            x = r[page]
            lines.append(f"| {n} | /{page} | {x['median']:.2f} | {x['p90']:.2f} | {x['max']:.2f} | "
                         f"{x['median'] / base[page]['median']:.2f} | {x['bytes']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)
    res = run(a.peers, a.scrapes)
    text = report(res, a.peers, a.scrapes)
    print(text)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "metrics_scrape.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
