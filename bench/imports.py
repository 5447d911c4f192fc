"""What each import of the daemon costs: RSS and wall time, step by step (issue 11).

    .venv/bin/python3 bench/imports.py              # the markdown table (median of --runs)
    .venv/bin/python3 bench/imports.py --runs 7

Each run is a fresh interpreter that imports the steps below in the daemon's order and records
VmRSS and the time after each one; a step's cost is what it adds to the steps before it (a module
imported by an earlier step costs nothing again). The last rows are what each backend loads on
top of the daemon core, and the two modules no backend loads any more (pyroute2, numpy), for
comparison. Nothing is started: no etcd, no namespace, no root needed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import List, Tuple

# (label, import statement), in the order a udp/vxlan/host-gw daemon reaches them.
STEPS: List[Tuple[str, str]] = [
    ("interpreter (python3 -c pass)", ""),
    ("cli + daemon core (flags, config, lease, peers, subnets)",
     "import fastflannel.agent.cli, fastflannel.agent.daemon"),
    ("etcd v3 client (etcd3, grpc, protobuf)", "import fastflannel.agent.registry"),
    ("netlink (raw rtnetlink: rtnl, rtnl_link, kernelwatch)",
     "import fastflannel.agent.netlink, fastflannel.agent.kernelwatch"),
    ("host-gw backend", "import fastflannel.agent.backends.hostgw"),
    ("vxlan backend", "import fastflannel.agent.backends.vxlan"),
    ("udp backend (the C fast path)", "import fastflannel.agent.backends.udp"),
    ("ipmasq + healthz (-ip-masq, -healthz-port)", "import fastflannel.agent.ipmasq, fastflannel.agent.healthz"),
    ("numpy (no longer loaded)", "import numpy"),
    ("pyroute2 (no longer loaded)", "import pyroute2; pyroute2.IPRoute"),
]

CHILD = r"""
import json, sys, time
def rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
out = [(rss(), time.perf_counter())]
for stmt in json.loads(sys.argv[1]):
    t = time.perf_counter()
    if stmt:
        try:
            exec(stmt, {})
        except ImportError:
            out.append((float('nan'), float('nan')))
            continue
    out.append((rss(), time.perf_counter() - t))
print(json.dumps(out))
"""


def one_run() -> List[Tuple[float, float]]:
    stmts = [s for _label, s in STEPS[1:]]
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(stmts)], capture_output=True, text=True,
                       timeout=120, check=True)
    rows = json.loads(p.stdout)
    base_rss = rows[0][0]
    steps = [(base_rss, 0.0)]
    prev = base_rss
    for r, t in rows[1:]:
        steps.append((r - prev if r == r else float("nan"), t))
        if r == r:
            prev = r
    return steps


def table(runs: List[List[Tuple[float, float]]]) -> str:
    out = ["| step | RSS added MiB | import ms |", "|---|---|---|"]
    for k, (label, _stmt) in enumerate(STEPS):
        rss = statistics.median(r[k][0] for r in runs)
        ms = statistics.median(r[k][1] for r in runs) * 1e3
        out.append(f"| {label} | {rss:.1f} | {'—' if k == 0 else f'{ms:.0f}'} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    runs = [one_run() for _ in range(args.runs)]
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
