"""A/B of bench/e2e.py between two builds, runs alternated (the machine may be shared).

    sudo .venv/bin/python3 bench/ab_e2e.py --a /tmp/main-copy --b . [--pairs 3] \\
        [--modes vxlan,udp-offload,udp] [--seconds 5] [--a-flags F,..] [--b-flags F,..]

Each tree must have its own environment (`<tree>/.venv`, with the tree installed editable and
its extension built): run i is `<A>/.venv/bin/python3 <A>/bench/e2e.py`, then the same with B, for
`--pairs` pairs. Every number is also taken as a ratio to kernel VXLAN of the same run, which
cancels much of the load the neighbours put on the machine. Prints and writes
bench/results/ab_e2e.md: medians per build, and each run's ratio to VXLAN. A and B may be one
tree with different daemon flags for the udp modes (`--a-flags`, `--b-flags`: a switch's A/B).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TESTS = (("tcp1", "gbit", "TCP ×1 Gbit/s"), ("tcp4", "gbit", "TCP ×4 Gbit/s"),
         ("udp64", "kpps", "UDP 64 B kpps"), ("rtt", "median_us", "RTT median µs"),
         ("rtt", "p99_us", "RTT p99 µs"), ("tcp1", "cpu_s_per_gbit", "CPU s/Gbit TCP ×1"))


def run_e2e(tree: str, modes: str, seconds: int, out: str, flags: str) -> dict:
    py = os.path.join(tree, ".venv", "bin", "python3")
    cmd = [py, os.path.join(tree, "bench", "e2e.py"), "--modes", modes, "--seconds", str(seconds),
           "--repeat", "1", "--out", out]
    if flags:
        cmd.append(f"--fastpath-flags={flags}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    with open(os.path.join(out, "e2e.json")) as f:
        return json.load(f)


def value(res: dict, mode: str, test: str, key: str):
    return res.get(mode, {}).get(test, {}).get(key)


def summarize(runs: dict, modes: list) -> str:
    lines = ["| mode | test | A median | B median | B/A | A runs (× VXLAN) | B runs (× VXLAN) |",
             "|---|---|---|---|---|---|---|"]
    for mode in modes:
        for test, key, label in TESTS:
            cells = {}
            for side in ("A", "B"):
                vals = [value(r, mode, test, key) for r in runs[side]]
                base = [value(r, "vxlan", test, key) for r in runs[side]]
                ok = [v for v in vals if v is not None]
                med = statistics.median(ok) if ok else None
                ratios = ", ".join(f"{v:.2f} ({v / b:.2f}×)" if v is not None and b else "—"
                                   for v, b in zip(vals, base))
                cells[side] = (med, ratios)
            a, b = cells["A"][0], cells["B"][0]
            ratio = f"{b / a:.2f}" if a and b else "—"
            lines.append(f"| {mode} | {label} | {a or 0:.2f} | {b or 0:.2f} | {ratio} | {cells['A'][1]} | "
                         f"{cells['B'][1]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="tree A (the baseline)")
    ap.add_argument("--b", required=True, help="tree B")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--modes", default="vxlan,udp-offload,udp")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--a-flags", default="", help="daemon flags for A's udp modes, comma-separated")
    ap.add_argument("--b-flags", default="", help="daemon flags for B's udp modes, comma-separated")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    if "vxlan" not in modes:
        sys.exit("--modes must include vxlan: every number is also a ratio to it")
    runs: dict = {"A": [], "B": []}
    work = tempfile.mkdtemp(prefix="ab-e2e-")
    for i in range(args.pairs):
        for side, tree, flags in (("A", args.a, args.a_flags), ("B", args.b, args.b_flags)):
            t0 = time.monotonic()
            res = run_e2e(os.path.abspath(tree), args.modes, args.seconds, os.path.join(work, f"{side}{i}"),
                          flags)
            runs[side].append(res)
            print(f"pair {i + 1} {side}: " + ", ".join(
                f"{m} {value(res, m, 'tcp1', 'gbit') or 0:.2f}" for m in modes)
                + f" Gbit/s TCP×1 ({time.monotonic() - t0:.0f} s)", flush=True)
    text = (f"# bench/e2e.py A/B, {args.pairs} alternated pairs, {args.seconds} s per test\n\n"
            f"A = `{args.a}` {args.a_flags}, B = `{args.b}` {args.b_flags}; "
            f"`bench/ab_e2e.py --pairs {args.pairs} --modes {args.modes}`. "
            "Medians over the runs; per run, the value and its ratio to kernel VXLAN of that run.\n\n"
            + summarize(runs, modes))
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ab_e2e.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "ab_e2e.json"), "w") as f:
        json.dump(runs, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
