"""A system-wide profile of one e2e mode under load: perf record -a -g (cpu-clock) during iperf3.

    sudo .venv/bin/python3 bench/e2e_profile.py [--mode udp-offload] [--streams 1] [--seconds 6]
        [--fastpath-flags F,..] [--out /tmp/ff-profile]

Makes the mode's two-host cluster as bench/e2e.py does, runs iperf3 (bounded by -t) and records
every CPU for the middle of the run; prints the top symbols (self time, %) and the split by
command, and leaves perf.data in --out for `perf report -i`.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2e import MODES  # noqa: E402
from e2e_measure import iperf  # noqa: E402

from fastflannel.lab import Lab, cleanup_stale  # noqa: E402
from fastflannel.lab.cluster import Cluster, seed_config  # noqa: E402

PERF = "/usr/bin/perf"


# the threads that carry the traffic: the forwarder's workers (named in ff_loop.c), both iperf3
# ends, softirq threads and the idle task (softirq work runs in whatever it interrupts); other
# load on a shared machine (a neighbour's tests) is left out of the symbol table
COMMS = "ff-tx0,ff-rx0,ff-tx1,ff-rx1,ff-io0,ff-io1,iperf3,swapper,ksoftirqd/0,ksoftirqd/1"


def report(data: str, sort: str, top: int, comms: str = "") -> str:
    sel = ["--comms", comms, "--percentage", "relative"] if comms else []
    out = subprocess.run([PERF, "report", "-i", data, "--no-children", "--sort", sort, "--stdio",
                          "-g", "none", "--percent-limit", "0.5", *sel],
                         capture_output=True, text=True, timeout=300).stdout
    rows = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join(rows[:top])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", default="udp-offload", choices=list(MODES))
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--fastpath-flags", default="")
    ap.add_argument("--out", default="/tmp/ff-profile")
    args = ap.parse_args(argv)
    backend, flags = MODES[args.mode]
    if backend == "udp":
        flags = flags + [f for f in args.fastpath_flags.split(",") if f]
    os.makedirs(args.out, exist_ok=True)
    data = os.path.join(args.out, "perf.data")
    cleanup_stale("ffprof")
    with Lab(prefix="ffprof") as lab:
        cluster = Cluster(lab, seed_config(backend), hosts=("h1", "h2"), extra_flags=flags)
        cluster.start_all()
        cluster.wait_all()
        cluster.add_containers()
        if not cluster.ping("h1", "h2", timeout=15):
            sys.exit("no connectivity")
        a, b = cluster.containers["h1"], cluster.containers["h2"]
        rec_s = max(1, args.seconds - 2)
        perf = subprocess.Popen([PERF, "record", "-a", "-g", "-e", "cpu-clock", "-F", "2000", "-o", data,
                                 "--", "sleep", str(rec_s)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0)            # perf starts while iperf3 ramps up; it stops by itself
        res = iperf(lab, a.ns, b.ns, b.ip, args.seconds, ["-P", str(args.streams)] if args.streams > 1 else [])
        perf.wait(timeout=60)
    print(f"iperf3 x{args.streams}: {res}")
    print("== by command\n" + report(data, "comm", 15))
    print("== top symbols (self; % of the samples of " + COMMS + " only)\n" + report(data, "sym", 40, COMMS))
    print("== workers by symbol\n" + report(data, "comm,sym", 30, "ff-tx0,ff-rx0,ff-tx1,ff-rx1,ff-io0,ff-io1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
