"""agent/metrics.py on its own: the metric objects, the page `render()` builds (parsed with
prometheus_client's parser), the directly rendered per-peer families against prometheus_client's
own serializer, and that nothing the daemon or the CNI plugin imports loads prometheus_client."""
from __future__ import annotations

import ipaddress
import math
import subprocess
import sys

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily

from fastflannel.agent import metrics
from fastflannel.agent.lease import Lease, LeaseAttrs
from fastflannel.agent.status import State
from support import scrape

PEER_FIELDS = ("tx_packets", "tx_bytes", "tx_dropped", "rx_packets", "rx_bytes", "rx_spoofed", "rx_dst_special",
               "rx_dst_foreign", "rx_dropped", "last_rx_ns")
PEER_DTYPE = np.dtype([("net", "<u4"), ("prefix", "u1"), ("peer_ip", "<u4"), ("peer_port", "<u2")]
                      + [(f, "<u8") for f in PEER_FIELDS], align=True)   # the fast path's PEER_DTYPE


def _ip(s: str) -> int:
    return int(ipaddress.ip_address(s))


def _peers(n: int) -> np.ndarray:
    a = np.zeros(n, dtype=PEER_DTYPE)
    for i in range(n):
        a[i] = (_ip("10.10.0.0") + (i << 12), 20, _ip("192.0.2.0") + 10 + i, 8285,
                100 + i, (100 + i) * 1028, i % 3, 200 + i, (200 + i) * 84, i % 2, i % 4, 2 * i, 0,
                0 if i == 0 else 123)
    return a


def test_counters_gauges_histograms():
    c = metrics.Counter("fastflannel_test_things_total", "t", ["kind"], preset=[("a",)])
    assert c.samples() == [(("a",), 0)]
    c.labels("b").inc()
    c.labels("b").inc(2)
    assert dict(c.samples()) == {("a",): 0, ("b",): 3}
    with pytest.raises(ValueError):
        c.labels("b").inc(-1)
    with pytest.raises(ValueError):
        c.labels("a", "extra")
    with pytest.raises(TypeError):
        c.labels("a").set(1)
    h = metrics.Histogram("fastflannel_test_seconds", "t", buckets=(0.1, 1))
    for v in (0.05, 0.5, 5):
        h.observe(v)
    assert h.samples() == [((), [1, 2, 3, 5.55])]       # cumulative buckets, then the sum
    g = metrics.Gauge("fastflannel_test_level", "t")
    g.set(4)
    assert g.samples() == [((), 4)]
    for m in (c, h, g):
        metrics.ALL.remove(m)


def test_etcd_state_transitions():
    e = metrics.EtcdState()
    assert e.snapshot()["state"] == "connecting"
    e.failed("http://a:2379")
    assert (e.snapshot()["endpoint"], e.snapshot()["state"]) == ("http://a:2379", "unreachable")
    e.failed(None)                                        # keeps the endpoint it had
    assert e.snapshot()["endpoint"] == "http://a:2379"
    e.switched("http://b:2379")
    assert e.snapshot() | {"since": 0} == {"endpoint": "http://b:2379", "state": "connected", "since": 0,
                                           "switches": 1}


def _reference_peer_page(peers: np.ndarray) -> str:
    """The per-peer families as prometheus_client's own serializer writes them."""
    fams = []
    for name, _kind, doc, series in metrics.PEER_FAMILIES:
        key = series[0][0].split("=")[0]              # direction or reason
        f = CounterMetricFamily(name, doc, labels=["subnet", "public_ip", key])
        for suffix, field in series:
            val = suffix.split("=")[1].strip('"')
            for row in peers:
                f.add_metric([f"{ipaddress.ip_address(int(row['net']))}/{row['prefix']}",
                              str(ipaddress.ip_address(int(row["peer_ip"]))), val], int(row[field]))
        fams.append(f)

    class Families:
        def collect(self):
            return iter(fams)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Families())
    return generate_latest(reg).decode()


def test_direct_peer_rendering_gives_what_prometheus_client_would():
    peers = _peers(5)
    ours, types = scrape.parse(metrics._render_peers(peers).decode())
    ref, ref_types = scrape.parse(_reference_peer_page(peers))
    last = {k: v for k, v in ours.items() if k[0] == "fastflannel_peer_last_receive_timestamp_seconds"}
    assert {k: v for k, v in ours.items() if k not in last} == ref
    assert {k: v for k, v in types.items() if k != "fastflannel_peer_last_receive_timestamp_seconds"} == ref_types
    # one last-receive sample per peer heard from (row 0 never was)
    assert len(last) == 4 and all(v > 1e9 for v in last.values())
    assert metrics._render_peers(peers[:0]) == b"" and metrics._render_peers(None) == b""
    # the fast path's decap reasons, per peer: 10.10.48.0/20 (row 3) sent 3 to a special address, 6 outside us
    drops = {dict(k[1])["reason"]: v for k, v in ours.items()
             if k[0] == "fastflannel_peer_dropped_packets_total" and ("subnet", "10.10.48.0/20") in k[1]}
    assert drops == {"send_error": 0, "spoofed": 1, "dst_special": 3, "dst_foreign": 6, "other": 0}


def test_every_fast_path_drop_reason_and_counter_has_its_series():
    """The real fast path's reasons (the decap checks' dst_special and dst_foreign among them) are
    drops by reason; icmp_suppressed has a family of its own."""
    from fastflannel.fastpath import DROP_REASONS, STAT_NAMES
    assert {"dst_special", "dst_foreign", "spoofed", "unknown_sender"} <= set(DROP_REASONS)
    counters = {name: 10 + i for i, name in enumerate(STAT_NAMES)}
    st = _state(_peers(1), counters)
    st.data.drop_reasons = DROP_REASONS
    series, _ = scrape.parse(metrics.render(st).decode())
    for reason in DROP_REASONS:
        assert scrape.value(series, "fastflannel_fastpath_dropped_packets_total", reason=reason) == counters[reason]
    assert scrape.value(series, "fastflannel_fastpath_icmp_suppressed_total") == counters["icmp_suppressed"]
    assert not [k for k in series if k[0].startswith("fastflannel_fastpath_") and "icmp_suppressed" in k[0]
                and k[0] != "fastflannel_fastpath_icmp_suppressed_total"]


def _state(peers=None, counters=None) -> State:
    lease = Lease(ipaddress.ip_network("10.10.16.0/20"), LeaseAttrs(ipaddress.ip_address("192.0.2.10")),
                  expiration=2e9)
    others = [Lease(ipaddress.ip_network(f"10.10.{32 + 16 * i}.0/20"),
                    LeaseAttrs(ipaddress.ip_address(f"192.0.2.{11 + i}"))) for i in range(2)]
    data = metrics.DataPlane(
        counters=counters or {}, drop_reasons=("no_route", "spoofed"), peers=peers,
        unknown_senders={"198.51.100.7": 3}, unknown_other=9, fallbacks={"tun_tso": 0, "udp_gso": 1},
        features={"tun_tso": True, "udp_gso": False, "workers": 2},
        devices={"flannel0": {k: 1 for k in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors",
                                             "tx_errors", "rx_dropped", "tx_dropped")}})
    return State(ready=True, started=1.0, lease=lease, network="10.0.0.0/8", backend_type="udp",
                 backend={"device": "flannel0"}, peers=others,
                 etcd={"endpoint": "http://192.0.2.1:2379", "state": "connected", "since": 1.0, "switches": 0},
                 data=data)


def test_render_makes_one_valid_page():
    counters = {"tun_rx_packets": 5, "tun_rx_bytes": 50, "udp_tx_packets": 4, "udp_tx_bytes": 40, "no_route": 1,
                "spoofed": 2, "icmp_sent": 1, "offload_fallbacks": 1, "a_counter_of_the_future": 7}
    series, types = scrape.parse(metrics.render(_state(_peers(2), counters)).decode())
    v = lambda name, **lab: scrape.value(series, name, **lab)  # noqa: E731
    assert v("fastflannel_fastpath_packets_total", device="tun", direction="rx") == 5
    assert v("fastflannel_fastpath_bytes_total", device="udp", direction="tx") == 40
    assert v("fastflannel_fastpath_dropped_packets_total", reason="spoofed") == 2
    assert v("fastflannel_fastpath_a_counter_of_the_future_total") == 7
    assert v("fastflannel_fastpath_offload_fallbacks_total", part="udp_gso") == 1
    assert v("fastflannel_fastpath_offload_enabled", part="udp_gso") == 0
    assert v("fastflannel_fastpath_workers") == 2
    assert v("fastflannel_fastpath_unknown_sender_packets_total", sender="198.51.100.7") == 3
    assert v("fastflannel_fastpath_unknown_sender_packets_total", sender="other") == 9
    assert v("fastflannel_device_dropped_packets_total", device="flannel0", direction="tx") == 1
    assert v("fastflannel_peers") == 2 and v("fastflannel_ready") == 1
    assert v("fastflannel_lease_expiration_timestamp_seconds") == 2e9
    assert v("fastflannel_etcd_connection_state", endpoint="http://192.0.2.1:2379", state="connected") == 1
    assert v("fastflannel_build_info", version=metrics.__version__, python=sys.version.split()[0]) == 1
    assert v("fastflannel_peer_packets_total", subnet="10.10.16.0/20", public_ip="192.0.2.11", direction="rx") == 201
    assert v("fastflannel_lease_event_apply_seconds_bucket", le="+Inf") >= 0
    assert v("fastflannel_process_resident_memory_bytes") > 0
    assert all(name.startswith("fastflannel_") for name in types), types
    assert all(not math.isnan(x) for x in series.values())


def test_render_without_a_fast_path_has_no_fast_path_families():
    st = _state()
    st.data = metrics.DataPlane()                           # host-gw: nothing from the data plane
    series, _ = scrape.parse(metrics.render(st).decode())
    assert not any(n.startswith(("fastflannel_fastpath_", "fastflannel_peer_", "fastflannel_device_"))
                   for n, _ in series)
    st.data = None                                          # a backend closing under the scrape
    assert scrape.parse(metrics.render(st).decode())[0]


def test_daemon_and_cni_never_load_prometheus_client():
    code = ("import sys; import fastflannel.agent.cni, fastflannel.agent.daemon, fastflannel.agent.healthz, "
            "fastflannel.agent.status, fastflannel.agent.metrics, fastflannel.agent.registry, "
            "fastflannel.agent.backends.vxlan, fastflannel.agent.backends.hostgw; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    cni = subprocess.run([sys.executable, "-c", "import sys, fastflannel.agent.cni; print(sorted(m for m in "
                          "sys.modules if m.startswith('fastflannel')))"], capture_output=True, text=True, check=True)
    assert "fastflannel.agent.metrics" not in cni.stdout
