"""Throughput through two Forwarders (no daemon, no etcd): iperf3 between the TUN addresses.

    sudo python3 bench/bench_fastpath_iperf.py [--seconds 5] [--modes batch1,batch64,offload,offload-w2]

Two lab namespaces on the underlay bridge, each running tests/support/node.py; iperf3 from
h1's lease IP to h2's: one TCP stream, four TCP streams, per mode: batch1 (one packet per
syscall, flannel's proxy design), batch64 (tier 1), offload (batch 64 + TUN TSO split in user
space + UDP_SEGMENT sends; UDP_GRO receive + userspace GRO into the TUN), and with -w2 the same
with workers=2 (multi-queue TUN, two worker pairs per host). Prints a table, the forwarders'
drop counters and, with workers, how the packets split over the TUN queues.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from fastflannel.fastpath import DROP_REASONS  # noqa: E402
from fastflannel.lab import Lab, cleanup_stale, have_netns_privileges, run  # noqa: E402
from support.overlay import LEASE, node_cmd  # noqa: E402


def wait_file(path: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


def measure(batch: int, offload: bool, workers: int, seconds: int) -> dict:
    with Lab(prefix="ffbfp") as lab:
        hosts = {n: lab.add_host(n) for n in ("h1", "h2")}
        other = {"h1": "h2", "h2": "h1"}
        stats = {}
        for n, h in hosts.items():
            stats[n] = os.path.join(lab.tmp, f"stats-{n}.json")
            cfg = {"bind_ip": h.ip, "tun_ip": LEASE[n], "batch": batch, "stats": stats[n], "offload": offload,
                   "workers": workers, "routes": [[LEASE[other[n]] + "/20", hosts[other[n]].ip]]}
            lab.spawn(h.ns, node_cmd(cfg), f"{n}.log")
        for p in stats.values():
            wait_file(p)
        lab.spawn(hosts["h2"].ns, ["iperf3", "-s", "-B", LEASE["h2"]], "iperf3-s.log")
        time.sleep(0.5)
        out = {}
        for label, streams in (("tcp1", 1), ("tcp4", 4)):
            p = run(lab.ns_cmd(hosts["h1"].ns, "iperf3", "-c", LEASE["h2"], "-B", LEASE["h1"], "-J",
                               "-t", str(seconds), "-P", str(streams)), timeout=seconds + 30)
            end = json.loads(p.stdout)["end"]
            out[label] = end["sum_received"]["bits_per_second"] / 1e9
            out[label + "_retr"] = end["sum_sent"].get("retransmits", 0)
        time.sleep(0.3)
        for n, p in stats.items():
            with open(p) as f:
                s = json.load(f)
            out[n + "_drops"] = {k: s[k] for k in DROP_REASONS if s[k]}
            out[n + "_queues"] = [q["tun_tx_packets"] for q in s["queues"]]
        return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default="batch1,batch64,offload,batch64-w2,offload-w2")
    args = ap.parse_args()
    reason = have_netns_privileges()
    if reason:
        print("skipped:", reason)
        return 0
    cleanup_stale("ffbfp")
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, iperf3 -t {args.seconds}")
    modes = {"batch1": (1, False, 1), "batch64": (64, False, 1), "offload": (64, True, 1),
             "batch64-w2": (64, False, 2), "offload-w2": (64, True, 2)}
    print(f"{'mode':>10} {'TCP x1 Gbit/s':>14} {'retr':>6} {'TCP x4 Gbit/s':>14} {'retr':>6}  drops; "
          "packets written per TUN queue")
    for mode in args.modes.split(","):
        r = measure(*modes[mode], args.seconds)
        print(f"{mode:>10} {r['tcp1']:>14.2f} {r['tcp1_retr']:>6} {r['tcp4']:>14.2f} {r['tcp4_retr']:>6}  "
              f"h1={r['h1_drops']} h2={r['h2_drops']}; queues h1={r['h1_queues']} h2={r['h2_queues']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
