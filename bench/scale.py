"""The control plane at scale: one daemon joining an etcd that holds N peer leases (issue 11).

    sudo .venv/bin/python3 bench/scale.py --backend vxlan --peers 10000      # one row
    sudo .venv/bin/python3 bench/scale.py --all                              # 1,000 and 10,000 x 3 backends

One namespace host (h1) on the lab underlay, a real etcd in the hub namespace, N synthetic leases
written by one etcd client in transactions of 1,000 puts (lab/scale.py: subnets, PublicIPs
on a scale underlay nothing answers or sends to). Then, in this order and in the same run:

* `ip -batch` (+ `bridge -batch` for FDB entries) adding the same N peers' kernel objects in a
  namespace of the same shape: the kernel's floor, and again for 1,000 peers (the burst's floor);
* the daemon started: time to subnet.env, time until every peer's route is in the kernel (vxlan
  programs the route last), for udp until the log says the bulk replace of the fast-path table
  is done; both from the daemon's start, and "list + program", the part after subnet.env (the
  daemon writes it before it lists the peers), which is what grows with N;
* single events: a lease put, wait for its route (udp: its log line), one at a time: latency from
  etcd's answer (the revision) to the kernel's RTM_NEWROUTE, p50/p99; the same for deletes;
* a burst: 1,000 new leases in one etcd transaction; time until the last route, and per-event
  latency; then the kernel state compared with the lease set (missing / stale objects);
* a route deleted by hand: time until it is back; the daemon's CPU while idle for --cpu-s seconds
  (its repair loop), and its RSS.

The benchmark host shares 2 cores with etcd and the observer; other jobs on the machine add noise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastflannel.lab import Lab, cleanup_stale, wait_for  # noqa: E402
from fastflannel.lab import scale as sl  # noqa: E402

PREFIX = "ffsc"
BACKEND_CFG = {"vxlan": {"Type": "vxlan", "VNI": sl.VNI}, "host-gw": {"Type": "host-gw"}, "udp": {"Type": "udp"}}
OWN_SUBNET = "10.0.1.0/24"
EVENT_BASE = 30000                     # synthetic index of the first event lease (10.118.48.0/24)
KLOG_RE = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) .*?\] (.*)$")


def config(backend: str) -> str:
    return json.dumps({"Network": "10.0.0.0/8", "SubnetLen": 24, "Backend": BACKEND_CFG[backend]})


def pct(xs: Sequence[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class KlogTail:
    """Wall-clock times of the daemon's log lines (udp has no kernel object to watch)."""

    def __init__(self, path: str):
        self.path, self.pos = path, 0
        self.lines: List[tuple] = []

    def read(self) -> None:
        with open(self.path, errors="replace") as f:
            f.seek(self.pos)
            chunk = f.read()
            self.pos = f.tell()
        year = datetime.date.today().year
        for line in chunk.splitlines():
            m = KLOG_RE.match(line)
            if m:
                mo, d, hh, mm, ss, us, msg = m.groups()
                t = datetime.datetime(year, int(mo), int(d), int(hh), int(mm), int(ss), int(us)).timestamp()
                self.lines.append((t, msg))

    def find(self, needle: str, timeout_s: float) -> Optional[float]:
        deadline = time.monotonic() + timeout_s
        while True:
            self.read()
            for t, msg in self.lines:
                if needle in msg:
                    return t
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)


class Run:
    def __init__(self, lab: Lab, backend: str, n: int, args):
        self.lab, self.backend, self.n, self.args = lab, backend, n, args
        self.r: Dict[str, object] = {"backend": backend, "peers": n}

    # -- set-up -----------------------------------------------------------------------------
    def floors(self) -> None:
        """`ip -batch` adding the N peers' objects, then, in the same namespace (so the tables are
        as large as the daemon's), the burst's: the kernel's own cost of the same work."""
        if self.backend == "udp":
            return
        ns = sl.make_floor_ns(self.lab, "floor")
        self.r["floor_all_s"] = sl.floor_seconds(ns, self.backend, range(self.n), self.lab.tmp)
        burst = range(EVENT_BASE + 10000, EVENT_BASE + 10000 + self.args.burst)
        self.r["floor_burst_s"] = sl.floor_seconds(ns, self.backend, burst, self.lab.tmp)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        self.lab.namespaces.remove(ns)

    def start_daemon(self) -> None:
        h = self.host
        state = os.path.join(self.lab.tmp, "h1")
        os.makedirs(state, exist_ok=True)
        self.subnet_file = os.path.join(state, "subnet.env")
        with open(self.subnet_file, "w") as f:     # the subnet a previous run held: keep it free of events
            f.write(f"FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET={OWN_SUBNET.replace('.0/', '.1/')}\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        t_file = os.stat(self.subnet_file).st_mtime_ns
        argv = [sys.executable, "-m", "fastflannel.agent.cli", "-iface=eth0",
                f"-etcd-endpoints={self.lab.etcd_endpoint}", f"-subnet-file={self.subnet_file}",
                *self.args.daemon_flag]
        env = dict(os.environ, FASTFLANNEL_STATE_DIR=state)
        env.update(kv.split("=", 1) for kv in self.args.daemon_env)
        t0 = time.monotonic()
        self.proc = self.lab.spawn(h.ns, argv, "h1.log", env=env)
        self.log = KlogTail(self.lab.tmp + "/h1.log")

        def written() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited rc={self.proc.returncode}:\n{self.lab.log('h1.log')[-3000:]}")
            return os.stat(self.subnet_file).st_mtime_ns != t_file
        wait_for(written, 60, interval=0.002)
        self.r["subnet_env_s"] = time.monotonic() - t0
        if self.backend == "udp":
            t_wall0 = time.time() - (time.monotonic() - t0)
            t = self.log.find(f"udp backend: {self.n} peer routes", 300)
            self.r["all_peers_s"] = (t - t_wall0) if t else float("nan")
        else:
            dsts = [int(sl.subnet(i).network_address) for i in range(self.n)]
            ok = sl.wait_all(self.obs.added, dsts, 600)
            self.r["all_peers_s"] = (max(self.obs.added[d] for d in dsts) - t0) if ok else float("nan")
        self.r["rss_start_mib"] = rss_mib(self.proc.pid)

    # -- events -----------------------------------------------------------------------------
    def _wait_event(self, i: int, add: bool, t_mono: float, t_wall: float) -> float:
        if self.backend == "udp":
            sn = sl.subnet(i)
            needle = f"route {sn} -> " if add else f"route {sn} removed"
            t = self.log.find(needle, 10)
            return max(0.0, t - t_wall) if t else float("nan")
        d = int(sl.subnet(i).network_address)
        seen = self.obs.added if add else self.obs.removed
        if not sl.wait_all(seen, [d], 10):
            return float("nan")
        return max(0.0, seen[d] - t_mono)

    def single_events(self) -> None:
        adds, dels = [], []
        idx = list(range(EVENT_BASE, EVENT_BASE + self.args.events))
        for i in idx:
            adds.append(self._wait_event(i, True, *self.writer.put(i)))
        for i in idx:
            dels.append(self._wait_event(i, False, *self.writer.delete(i)))
        self.r.update(add_p50_ms=pct(adds, 50) * 1e3, add_p99_ms=pct(adds, 99) * 1e3,
                      del_p50_ms=pct(dels, 50) * 1e3, del_p99_ms=pct(dels, 99) * 1e3,
                      events_lost=sum(1 for x in adds + dels if x != x))

    def burst(self) -> None:
        idx = list(range(EVENT_BASE + 10000, EVENT_BASE + 10000 + self.args.burst))
        t_send = time.monotonic()
        t0 = self.writer.bulk(idx)        # one transaction: one revision, one watch response
        t_wall = time.time() - (time.monotonic() - t0)
        if self.backend == "udp":
            lat = [self._wait_event(i, True, t0, t_wall) for i in idx]
            ok = all(x == x for x in lat)
            self.r["burst_s"] = max(lat) if ok else float("nan")
        else:
            dsts = [int(sl.subnet(i).network_address) for i in idx]
            ok = sl.wait_all(self.obs.added, dsts, 600)
            lat = [max(0.0, self.obs.added.get(d, float("nan")) - t0) for d in dsts]
            self.r["burst_s"] = max(lat) if ok else float("nan")
        self.r["burst_write_s"] = t0 - t_send
        self.r["burst_n"] = len(idx)
        self.r.update(burst_p50_ms=pct(lat, 50) * 1e3, burst_p99_ms=pct(lat, 99) * 1e3)
        if self.backend != "udp":
            want = sl.expected_state(self.backend, {i: 0 for i in list(range(self.n)) + idx})
            time.sleep(0.5)
            have = sl.kernel_state(self.backend)
            self.r["state_missing"] = sum(len(want[k] - have[k]) for k in want)
            self.r["state_stale"] = sum(len(have[k] - want[k]) for k in want)

    def repair_and_idle(self) -> None:
        if self.backend != "udp":
            victim = sl.subnet(self.n // 2)
            d = int(victim.network_address)
            self.obs.forget([d])
            t0 = time.monotonic()
            subprocess.run(["ip", "route", "del", str(victim)], check=True)
            back = sl.wait_all(self.obs.added, [d], 15)
            self.r["repair_s"] = (self.obs.added[d] - t0) if back else float("nan")
        time.sleep(2)     # let the daemon finish the work the events started
        c0, t0 = proc_cpu_s(self.proc.pid), time.monotonic()
        time.sleep(self.args.cpu_s)
        self.r["idle_cpu_pct"] = 100 * (proc_cpu_s(self.proc.pid) - c0) / (time.monotonic() - t0)
        self.r["rss_end_mib"] = rss_mib(self.proc.pid)

    # -- the whole run ----------------------------------------------------------------------
    def go(self) -> Dict[str, object]:
        self.floors()
        self.host = self.lab.add_host("h1")
        self.lab.sh(self.host.ns, f"ip addr add {sl.SCALE_HOST_IP}/{sl.SCALE_UNDERLAY.prefixlen} dev eth0")
        own = sl.enter_netns(self.host.ns)     # etcd over h1's eth0, the observer in h1's kernel
        try:
            self.writer = sl.LeaseWriter(self.lab.etcd_endpoint, self.backend)
            self.writer.put_config(config(self.backend))
            t0 = time.monotonic()
            self.writer.bulk(list(range(self.n)))
            self.r["write_leases_s"] = time.monotonic() - t0
            self.obs = sl.RouteObserver()
            self.start_daemon()
            self.single_events()
            self.burst()
            self.repair_and_idle()
            self.r["observer_overflowed"] = self.obs.overflowed
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon died:\n{self.lab.log('h1.log')[-3000:]}")
            self.obs.close()
            self.writer.close()
        finally:
            sl.enter_netns(None, keep=own)
            os.close(own)
        return self.r


def run_one(backend: str, n: int, args) -> Dict[str, object]:
    cleanup_stale(PREFIX)
    with Lab(prefix=PREFIX) as lab:
        lab.start_etcd(extra_args=[f"--max-txn-ops={sl.TXN_OPS}", "--quota-backend-bytes=4294967296"])
        r = Run(lab, backend, n, args).go()
    return r


def fmt(x: object, nd: int = 2) -> str:
    if isinstance(x, float):
        return "n/a" if x != x else f"{x:.{nd}f}"
    return str(x)


def table(rows: List[Dict[str, object]]) -> str:
    head = ("| backend | peers | subnet.env s | all peers s | ip -batch s | ratio | list + program s | ratio | "
            "add p50/p99 ms | "
            "del p50/p99 ms | burst (n) s | burst floor s | burst ratio | state exact | repair s | "
            "idle CPU % | RSS MiB |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        floor = r.get("floor_all_s")
        ratio = fmt(r["all_peers_s"] / floor) if isinstance(floor, float) and floor else "—"
        # What grows with N: from subnet.env (written before the listing) to the last peer.
        work = r["all_peers_s"] - r["subnet_env_s"]       # type: ignore[operator]
        wratio = fmt(work / floor) if isinstance(floor, float) and floor else "—"
        bf = r.get("floor_burst_s")
        bratio = fmt(r["burst_s"] / bf) if isinstance(bf, float) and bf else "—"
        exact = "—" if "state_missing" not in r else (
            "yes" if r["state_missing"] == r["state_stale"] == 0
            else f"missing {r['state_missing']}, stale {r['state_stale']}")
        out.append(f"| {r['backend']} | {r['peers']} | {fmt(r['subnet_env_s'])} | {fmt(r['all_peers_s'])} | "
                   f"{fmt(floor) if floor is not None else '—'} | {ratio} | {fmt(work)} | {wratio} | "
                   f"{fmt(r['add_p50_ms'], 1)} / {fmt(r['add_p99_ms'], 1)} | {fmt(r['del_p50_ms'], 1)} / "
                   f"{fmt(r['del_p99_ms'], 1)} | {fmt(r['burst_s'])} ({r.get('burst_n', '?')}) | "
                   f"{fmt(bf) if bf is not None else '—'} | "
                   f"{bratio} | {exact} | {fmt(r.get('repair_s', float('nan')))} | {fmt(r['idle_cpu_pct'])} | "
                   f"{fmt(r['rss_end_mib'], 1)} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=sorted(BACKEND_CFG), default="vxlan")
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--all", action="store_true", help="1,000 and 10,000 peers for every backend")
    ap.add_argument("--events", type=int, default=200, help="single add (then delete) events")
    ap.add_argument("--burst", type=int, default=1000, help="leases in the burst transaction")
    ap.add_argument("--cpu-s", type=float, default=60.0, help="idle seconds for the repair-loop CPU")
    ap.add_argument("--daemon-flag", action="append", default=[], help="extra daemon flag (repeatable)")
    ap.add_argument("--daemon-env", action="append", default=[],
                    help="NAME=VALUE for the daemon's environment, e.g. PYTHONPATH of another tree (repeatable)")
    ap.add_argument("--json", help="append each row as a JSON line to this file")
    ap.add_argument("--out", help="write the table (markdown) to this file, e.g. bench/results/scale.md")
    ap.add_argument("--table", metavar="JSONL", help="only print (and --out) the table of the rows in this "
                    "--json file (rows measured one run at a time)")
    args = ap.parse_args(argv)
    if args.table:
        with open(args.table) as f:
            write_table([json.loads(line) for line in f if line.strip()], args.out)
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    combos = [(b, n) for n in (1000, 10000) for b in ("vxlan", "host-gw", "udp")] if args.all \
        else [(args.backend, args.peers)]
    rows = []
    for b, n in combos:
        r = run_one(b, n, args)
        rows.append(r)
        print(json.dumps(r), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    write_table(rows, args.out)
    return 0


def write_table(rows: List[Dict[str, object]], out: Optional[str]) -> None:
    print(table(rows))
    if out:
        with open(out, "w") as f:
            f.write(f"# bench/scale.py, {time.strftime('%Y-%m-%d')}, Linux {os.uname().release}, "
                    f"{os.cpu_count()} CPUs (shared with other jobs)\n\n{table(rows)}\n")


if __name__ == "__main__":
    sys.exit(main())
