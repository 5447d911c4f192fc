"""End-to-end throughput: container → container across two namespace hosts, every mode in one run.

    sudo python3 bench/e2e.py [--seconds 5] [--modes vxlan,udp-batch1,udp,udp-offload,udp-mq]

Each mode is a fresh two-host cluster running the fastflannel daemon (real etcd, real devices):
  vxlan        kernel VXLAN through the daemon's vxlan backend (the reference)
  host-gw      plain kernel routes through the daemon's host-gw backend (no encapsulation)
  udp-batch1   udp backend, batch 1: one packet per syscall, flannel's proxy design
  udp          udp backend, batched recvmmsg/sendmmsg (tier 1)
  udp-offload  udp backend with TUN TSO/GRO + UDP GSO/GRO (tier 2, the daemon's default)
  udp-mq       tier 2 plus two multi-queue workers (tier 3)
Measured with iperf3 (one TCP stream, four TCP streams) and bench/udpblast.c (64-byte UDP packet
rate from a sendmmsg sender, counted at the receiver); CPU seconds per Gbit from /proc/stat (all cores,
so kernel work in softirq counts too). Writes
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

from fastflannel.lab import Lab, cleanup_stale, wait_for  # noqa: E402
from fastflannel.lab.cluster import Cluster, seed_config  # noqa: E402

MODES = {
    "vxlan": ("vxlan", []),
    "host-gw": ("host-gw", []),
    "udp-batch1": ("udp", ["-fastpath-offload=false", "-fastpath-batch=1"]),
    "udp": ("udp", ["-fastpath-offload=false"]),
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
    bps = end["sum_received"]["bits_per_second"]
    res = {"gbit": bps / 1e9, "cpu_s_per_gbit": cpu / max(bps * seconds / 1e9, 1e-9)}
    return res


def build_udpblast() -> str:
    """Compile bench/udpblast.c (a sendmmsg/recvmmsg packet-rate tool) into a temp dir."""
    import tempfile
    out = os.path.join(tempfile.mkdtemp(prefix="udpblast-"), "udpblast")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udpblast.c")
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out, src], check=True)
    return out


def udp_rate(lab: Lab, blast: str, client_ns: str, server_ns: str, server_ip: str, seconds: int) -> dict:
    """64-byte UDP datagrams from a batched sender (sendmmsg); packets/s delivered to the receiver."""
    sink = subprocess.Popen(lab.ns_cmd(server_ns, blast, "recv", server_ip, "5202", str(seconds + 10)),
                            stdout=subprocess.PIPE, text=True)
    try:
        sink.stdout.readline()
        c0 = cpu_busy_seconds()
        sent = int(lab.sh(client_ns, f"{blast} send {server_ip} 5202 {seconds} 64",
                          timeout=seconds + 20).stdout.split()[0])
        out, _ = sink.communicate(timeout=15)
        cpu = cpu_busy_seconds() - c0
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    got, dur = out.split()
    got, dur = int(got), float(dur)
    return {"kpps": got / max(dur, 1e-9) / 1e3, "delivered": got / max(sent, 1),
            "cpu_us_per_pkt": cpu / max(got, 1) * 1e6}


def run_mode(mode: str, seconds: int, blast: str) -> dict:
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
            "udp64": udp_rate(lab, blast, a.ns, b.ns, b.ip, seconds),
        }
        return out


def _ratio(v, base):
    return f"{v / base:.2f}×" if v is not None and base else "—"


def write_report(results: dict, seconds: int) -> str:
    def get(mode, test, key):
        return results.get(mode, {}).get(test, {}).get(key)
    lines = ["# End-to-end throughput, container → container, two namespace hosts",
             "", f"Kernel {platform.release()}, {os.cpu_count()} cores, {seconds} s per test, "
                 f"all modes in one run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
             "Command: `sudo python3 bench/e2e.py`. Ratios are to kernel VXLAN and to the "
             "one-packet-per-syscall mode (udp-batch1) of the same run.", "",
             "| mode | TCP ×1 Gbit/s | ×1 vs VXLAN | ×1 vs batch1 | TCP ×4 Gbit/s | ×4 vs VXLAN | "
             "UDP 64 B kpps | CPU s/Gbit (TCP ×1) |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in results:
        t1, t4 = get(mode, "tcp1", "gbit"), get(mode, "tcp4", "gbit")
        kpps, cpu = get(mode, "udp64", "kpps"), get(mode, "tcp1", "cpu_s_per_gbit")
        lines.append(f"| {mode} | {t1 or 0:.2f} | {_ratio(t1, get('vxlan', 'tcp1', 'gbit'))} | "
                     f"{_ratio(t1, get('udp-batch1', 'tcp1', 'gbit'))} | {t4 or 0:.2f} | "
                     f"{_ratio(t4, get('vxlan', 'tcp4', 'gbit'))} | {kpps or 0:.0f} | {cpu or 0:.2f} |")
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
    blast = build_udpblast()
    for mode in args.modes.split(","):
        print(f"== {mode}", flush=True)
        results[mode] = run_mode(mode, args.seconds, blast)
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
