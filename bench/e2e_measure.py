"""The measurements of bench/e2e.py, one cluster's worth: iperf3 TCP, ping RTT, 64-byte UDP rate.

Every load is bounded in time (iperf3 -t, udpblast's own deadline) or count (ping -c), and every
address is a container of the namespace cluster the caller made.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import tempfile

PING_COUNT = 1000             # at 2 ms: a 2 s load
PING_INTERVAL_S = "0.002"     # ping's minimum for root without flooding
PING_WARMUP = 20              # the first replies (ARP, cold caches) are not counted
_PING_TIME = re.compile(r"icmp_seq=(\d+) .*time=([0-9.]+) ms")


def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine (all cores, softirq included) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def iperf(lab, client_ns: str, server_ns: str, server_ip: str, seconds: int, args: list) -> dict:
    srv = subprocess.Popen(lab.ns_cmd(server_ns, "iperf3", "-s", "-1", "-B", server_ip),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from fastflannel.lab import wait_for
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
    retr = end.get("sum_sent", {}).get("retransmits")
    return {"gbit": bps / 1e9, "cpu_s_per_gbit": cpu / max(bps * seconds / 1e9, 1e-9),
            "retransmits": retr}


def parse_ping(text: str, warmup: int = PING_WARMUP) -> list:
    """Per-reply RTTs in µs from ping's output, the first `warmup` sequence numbers left out."""
    return [float(ms) * 1e3 for seq, ms in _PING_TIME.findall(text) if int(seq) > warmup]


def percentile(vals: list, q: float) -> float:
    """The q-quantile (0..1) by nearest rank: a value that was measured."""
    s = sorted(vals)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def ping_rtt(lab, client_ns: str, server_ip: str, count: int = PING_COUNT) -> dict:
    """ping -i 0.002 container -> container: median and p99 RTT in µs, the loss."""
    out = lab.sh(client_ns, f"ping -n -i {PING_INTERVAL_S} -c {count} -W 1 {server_ip}",
                 check=False, timeout=count * 0.01 + 20).stdout
    rtts = parse_ping(out)
    if not rtts:
        return {"error": out[-300:]}
    return {"median_us": statistics.median(rtts), "p99_us": percentile(rtts, 0.99),
            "replies": len(rtts), "lost": max(0, count - PING_WARMUP - len(rtts))}


def build_udpblast() -> str:
    """Compile bench/udpblast.c (a sendmmsg/recvmmsg packet-rate tool) into a temp dir."""
    out = os.path.join(tempfile.mkdtemp(prefix="udpblast-"), "udpblast")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "udpblast.c")
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out, src], check=True)
    return out


def udp_rate(lab, blast: str, client_ns: str, server_ns: str, server_ip: str, seconds: int) -> dict:
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


# (test, key) pairs whose per-run values are reduced to a median over the repeats
METRICS = (("tcp1", "gbit"), ("tcp1", "cpu_s_per_gbit"), ("tcp1", "retransmits"),
           ("tcp4", "gbit"), ("tcp4", "cpu_s_per_gbit"), ("tcp4", "retransmits"),
           ("rtt", "median_us"), ("rtt", "p99_us"), ("rtt", "lost"),
           ("udp64", "kpps"), ("udp64", "delivered"), ("udp64", "cpu_us_per_pkt"))


def medians(runs: list) -> dict:
    """One mode's runs -> {test: {key: median}} (the shape of a single run), plus n."""
    out: dict = {}
    for test, key in METRICS:
        vals = [r.get(test, {}).get(key) for r in runs]
        vals = [v for v in vals if v is not None]
        if vals:
            out.setdefault(test, {})[key] = statistics.median(vals)
    out["n"] = sum(1 for r in runs if "error" not in r)
    return out
