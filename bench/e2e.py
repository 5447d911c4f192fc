"""End-to-end throughput: container → container across two namespace hosts, every mode in one run.

    sudo python3 bench/e2e.py [--seconds 5] [--modes vxlan,udp-batch1,udp,udp-offload,udp-mq]

Each mode is a fresh two-host cluster running the fastflannel daemon (real etcd, real devices):
  vxlan        kernel VXLAN through the daemon's vxlan backend (the reference)
  udp-batch1   udp backend, batch 1: one packet per syscall, flannel's proxy design
  udp          udp backend, batched recvmmsg/sendmmsg (tier 1)
  udp-offload  udp backend with TUN TSO/GRO + UDP GSO/GRO (tier 2)
  udp-mq       tier 2 plus two multi-queue workers (tier 3)
Measured with iperf3: one TCP stream, four TCP streams, 64-byte UDP packet rate; CPU seconds per
Gbit from /proc/stat (all cores, so kernel work in softirq counts too). Writes
bench/results/e2e.md and bench/results/e2e.png and prints the ratios to kernel VXLAN.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastflannel.agent.cluster import Cluster  # noqa: E402
from fastflannel.agent.demo import seed_config  # noqa: E402
from fastflannel.agent.lab import Lab, cleanup_stale, wait_for  # noqa: E402

MODES = {
    "vxlan": ("vxlan", []),
    "udp-batch1": ("udp", ["-fastpath-batch=1"]),
    "udp": ("udp", []),
    "udp-offload": ("udp", ["-fastpath-offload"]),
    "udp-mq": ("udp", ["-fastpath-offload", "-fastpath-workers=2"]),
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cpu_busy_seconds() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def iperf(lab: Lab, client_ns: str, server_ns: str, server_ip: str, seconds: int, args: list) -> dict:
    srv = subprocess.Popen(lab.ns_cmd(server_ns, "iperf3", "-s", "-1", "-B", server_ip),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: lab.sh(server_ns, "ss -ltn | grep -q 5201", check=False).returncode == 0, 5)
        c0 = cpu_busy_seconds()
        out = lab.sh(client_ns, f"iperf3 -c {server_ip} -t {seconds} -J {' '.join(args)}",
                     check=False, timeout=seconds + 30).stdout
        cpu = cpu_busy_seconds() - c0
    finally:
        srv.kill()
        srv.wait()
    try:
        end = json.loads(out)["end"]
    except (ValueError, KeyError):
        return {"error": out[-300:]}
    if "sum_received" in end:
        bps = end["sum_received"]["bits_per_second"]
    else:
        bps = end["sum"]["bits_per_second"] * (1 - end["sum"].get("lost_percent", 0) / 100)
    res = {"gbit": bps / 1e9, "cpu_s_per_gbit": cpu / max(bps * seconds / 1e9, 1e-9)}
    if "sum" in end and "packets" in end["sum"]:
        pk = end["sum"]["packets"] - end["sum"].get("lost_packets", 0)
        res["kpps"] = pk / seconds / 1e3
    return res


def run_mode(mode: str, seconds: int) -> dict:
    backend, flags = MODES[mode]
    cleanup_stale("ffbench")
    with Lab(prefix="ffbench") as lab:
        cluster = Cluster(lab, seed_config(backend), hosts=("h1", "h2"), extra_flags=flags)
        cluster.start_all()
        cluster.wait_all()
        cluster.add_containers()
        if not cluster.ping("h1", "h2", timeout=15):
            return {"error": "no connectivity\n" + cluster.log("h1")[-1500:]}
        a, b = cluster.containers["h1"], cluster.containers["h2"]
        out = {
            "tcp1": iperf(lab, a.ns, b.ns, b.ip, seconds, []),
            "tcp4": iperf(lab, a.ns, b.ns, b.ip, seconds, ["-P", "4"]),
            "udp64": iperf(lab, a.ns, b.ns, b.ip, seconds, ["-u", "-b", "0", "-l", "64"]),
        }
        return out


def fmt(v, key, digits=2):
    return f"{v[key]:.{digits}f}" if isinstance(v, dict) and key in v else "—"


def write_report(results: dict, seconds: int) -> str:
    base = results.get("vxlan", {}).get("tcp1", {}).get("gbit")
    lines = [f"# End-to-end throughput, container → container, two namespace hosts",
             "", f"Kernel {platform.release()}, {os.cpu_count()} cores, iperf3 {seconds} s per test, "
                 f"all modes in one run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
             "Command: `sudo python3 bench/e2e.py`", "",
             "| mode | TCP ×1 Gbit/s | ratio to VXLAN | TCP ×4 Gbit/s | UDP 64 B kpps | CPU s / Gbit (TCP ×1) |",
             "|---|---|---|---|---|---|"]
    for mode, r in results.items():
        t1 = r.get("tcp1", {})
        ratio = f"{t1['gbit'] / base:.2f}×" if base and "gbit" in t1 else "—"
        lines.append(f"| {mode} | {fmt(t1, 'gbit')} | {ratio} | {fmt(r.get('tcp4'), 'gbit')} | "
                     f"{fmt(r.get('udp64'), 'kpps', 0)} | {fmt(t1, 'cpu_s_per_gbit')} |")
    return "\n".join(lines) + "\n"


def write_chart(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    modes = list(results)
    vals = [[results[m].get(k, {}).get("gbit", 0) for m in modes] for k in ("tcp1", "tcp4")]
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.38
    for i, (label, v) in enumerate(zip(("1 TCP stream", "4 TCP streams"), vals)):
        ax.bar([x + (i - 0.5) * w for x in range(len(modes))], v, w, label=label)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel("Gbit/s")
    ax.set_title("fastflannel: container → container across two namespace hosts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    results = {}
    for mode in args.modes.split(","):
        print(f"== {mode}", flush=True)
        results[mode] = run_mode(mode, args.seconds)
        print(json.dumps(results[mode]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    report = write_report(results, args.seconds)
    with open(os.path.join(args.out, "e2e.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, "e2e.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_chart(results, os.path.join(args.out, "e2e.png"))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
