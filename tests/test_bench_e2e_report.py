"""bench/e2e.py's arithmetic: ping parsing, medians over runs, and issue 15's goals verdicts (the
measurements themselves need root and run in bench/, not here)."""
from __future__ import annotations

import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import e2e  # noqa: E402
import e2e_measure as m  # noqa: E402

PING = """PING 10.10.32.2 (10.10.32.2) 56(84) bytes of data.
64 bytes from 10.10.32.2: icmp_seq=1 ttl=62 time=1.20 ms
64 bytes from 10.10.32.2: icmp_seq=2 ttl=62 time=0.150 ms
64 bytes from 10.10.32.2: icmp_seq=3 ttl=62 time=0.0950 ms
64 bytes from 10.10.32.2: icmp_seq=4 ttl=62 time=0.210 ms

--- 10.10.32.2 ping statistics ---
4 packets transmitted, 4 received, 0% packet loss, time 6ms
rtt min/avg/max/mdev = 0.095/0.413/1.200/0.456 ms
"""


def test_parse_ping_skips_the_warmup_and_converts_to_us():
    assert m.parse_ping(PING, warmup=1) == [150.0, 95.0, 210.0]
    assert m.parse_ping(PING, warmup=0)[0] == 1200.0
    assert m.parse_ping("no replies at all", warmup=0) == []


def test_percentile_is_a_measured_value():
    vals = list(range(1, 101))
    assert (m.percentile(vals, 0.5), m.percentile(vals, 0.99), m.percentile(vals, 1.0)) == (50, 99, 100)
    assert m.percentile([7.0], 0.99) == 7.0


def test_medians_over_runs_leave_out_missing_values():
    runs = [{"tcp1": {"gbit": 1.0}, "rtt": {"median_us": 30.0}}, {"tcp1": {"gbit": 3.0}},
            {"tcp1": {"gbit": 2.0}, "rtt": {"median_us": 50.0}}, {"error": "no connectivity"}]
    med = m.medians(runs)
    assert med["tcp1"]["gbit"] == 2.0 and med["rtt"]["median_us"] == 40.0 and med["n"] == 3


def test_goals_are_judged_against_vxlan_of_the_same_run():
    med = {"vxlan": {"tcp1": {"gbit": 10.0, "cpu_s_per_gbit": 0.09}, "tcp4": {"gbit": 20.0},
                     "rtt": {"median_us": 30.0}, "udp64": {"kpps": 100.0}},
           "udp-offload": {"tcp1": {"gbit": 10.0, "cpu_s_per_gbit": 0.2}, "tcp4": {"gbit": 15.0},
                           "rtt": {"median_us": 51.0}}}
    verdicts = {label: ok for label, _text, ok in e2e.judge(med, "udp-offload")}
    assert verdicts == {"TCP ×1 throughput": True, "TCP ×4 throughput": False,
                        "ping RTT median": False, "64 B UDP rate": None,
                        "CPU per Gbit/s (TCP ×1)": False}
    med["udp-offload"]["rtt"]["median_us"] = 50.0            # exactly VXLAN + 20 µs: met
    assert dict((lb, ok) for lb, _t, ok in e2e.judge(med, "udp-offload"))["ping RTT median"] is True
    report = e2e.write_report(med, 5, 3, "udp-offload", "cmd")
    assert "| TCP ×4 throughput | 0.75× VXLAN (goal ≥ 0.8×) | not met |" in report
    assert "| 64 B UDP rate | not measured | — |" in report
