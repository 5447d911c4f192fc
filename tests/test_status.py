"""`fastflannel status` without a daemon: the table from a status document, the JSON's peer
rows (the lease cache joined with the fast path's per-peer counters), and the one-line error
when nothing answers. A live daemon is tests/test_observe_cluster.py."""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time

import numpy as np

from fastflannel.agent import metrics
from fastflannel.agent.lease import Lease, LeaseAttrs
from fastflannel.agent.status import State, format_status, socket_path, status_doc

FIELDS = ("tx_packets", "tx_bytes", "tx_dropped", "rx_packets", "rx_bytes", "rx_spoofed", "rx_dst_special",
          "rx_dst_foreign", "rx_dropped", "last_rx_ns")
DTYPE = np.dtype([("net", "<u4"), ("prefix", "u1"), ("peer_ip", "<u4"), ("peer_port", "<u2")]
                 + [(f, "<u8") for f in FIELDS], align=True)


def _lease(subnet: str, ip: str, expiration=None) -> Lease:
    return Lease(ipaddress.ip_network(subnet), LeaseAttrs(ipaddress.ip_address(ip)), expiration)


def _state(with_counters: bool) -> State:
    now = time.time()
    peers = None
    if with_counters:
        peers = np.zeros(1, dtype=DTYPE)
        peers[0] = (int(ipaddress.ip_address("10.10.32.0")), 20, int(ipaddress.ip_address("192.0.2.11")), 8285,
                    1234567, 1_500_000_000, 1, 42, 4200, 2, 4, 5, 3, time.monotonic_ns() - 2_000_000_000)
    return State(ready=True, started=now - 3700, lease=_lease("10.10.16.0/20", "192.0.2.10", now + 7200),
                 network="10.0.0.0/8", backend_type="udp" if with_counters else "vxlan",
                 backend={"device": "flannel0", "port": 8285, "offload": {"tun_tso": True, "udp_gso": False}},
                 peers=[_lease("10.10.48.0/20", "192.0.2.12", now + 90.5), _lease("10.10.32.0/20", "192.0.2.11")],
                 etcd={"endpoint": "http://192.0.2.1:2379", "state": "connected", "since": now - 5, "switches": 0},
                 data=metrics.DataPlane(counters={"udp_tx_packets": 9, "udp_tx_bytes": 900, "spoofed": 2},
                                        drop_reasons=("no_route", "spoofed"), peers=peers) if with_counters
                 else metrics.DataPlane())


def test_doc_joins_leases_with_counters():
    doc = status_doc(_state(True))
    assert [p["subnet"] for p in doc["peers"]] == ["10.10.32.0/20", "10.10.48.0/20"]   # address order
    counted, uncounted = doc["peers"]
    assert (counted["tx_packets"], counted["rx_bytes"], counted["dropped"]) == \
        (1234567, 4200, {"send_error": 1, "spoofed": 2, "dst_special": 4, "dst_foreign": 5, "other": 3})
    assert abs(time.time() - counted["last_seen"] - 2.0) < 0.5
    assert "tx_packets" not in uncounted            # no route in the fast path (yet): no counters
    assert doc["per_peer_counters"] and doc["lease"]["public_ip"] == "192.0.2.10"
    assert doc["backend"]["type"] == "udp"


def test_table_at_a_glance():
    text = format_status(status_doc(_state(True)))
    lines = text.splitlines()
    assert lines[0].startswith("fastflannel ") and "ready, up 1h01m" in lines[0]
    assert lines[1].startswith("lease     10.10.16.0/20  public IP 192.0.2.10  expires in 1h59m")
    assert "backend   udp  device flannel0, port 8285, offload tun-tso" in text
    assert "etcd      http://192.0.2.1:2379  connected for 5.0s" in text
    assert "dropped 2: spoofed 2" in text
    head = next(i for i, line in enumerate(lines) if line.startswith("PEER SUBNET"))
    assert lines[head].split() == ["PEER", "SUBNET", "PUBLIC", "IP", "TX", "PACKETS", "TX", "BYTES", "RX",
                                   "PACKETS", "RX", "BYTES", "DROPPED", "LAST", "SEEN"]
    assert lines[head + 1].split() == ["10.10.32.0/20", "192.0.2.11", "1,234,567", "1.4", "GiB", "42", "4.1", "KiB",
                                       "15", "2.0s", "ago"]
    assert lines[head + 2].split()[:3] == ["10.10.48.0/20", "192.0.2.12", "-"]


def test_table_for_a_kernel_backend():
    text = format_status(status_doc(_state(False)))
    assert "LEASE EXPIRES" in text and "10.10.48.0/20  192.0.2.12  in 1m30s" in text
    assert "10.10.32.0/20  192.0.2.11  never" in text
    assert "the vxlan backend forwards in the kernel, which keeps no per-peer counters" in text


def test_no_daemon_is_one_line_and_exit_1(tmp_path):
    for args in (["--socket", str(tmp_path / "none.sock")], ["--url", "http://127.0.0.1:1"]):
        p = subprocess.run([sys.executable, "-m", "fastflannel.agent.cli", "status", *args],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and p.stdout == "", p
        assert len(p.stderr.splitlines()) == 1 and p.stderr.startswith("fastflannel: no fastflannel daemon answers at ")
    # something that is not a fastflannel daemon
    path = str(tmp_path / "other.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    child = subprocess.Popen([sys.executable, "-m", "fastflannel.agent.cli", "status", "--socket", path,
                              "--timeout", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    conn, _ = srv.accept()
    conn.recv(4096)
    conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    conn.close()
    out, err = child.communicate(timeout=30)
    srv.close()
    assert child.returncode == 1 and err.strip() == f"fastflannel: {path} answered 404 to /status (not fastflannel, " \
        "or too old?)", err


def test_socket_beside_the_subnet_file():
    assert socket_path("/run/flannel/subnet.env") == "/run/flannel/fastflannel.sock"
    assert socket_path("subnet.env") == os.path.join(os.getcwd(), "fastflannel.sock")


def test_an_ipv6_only_lease_shows_its_ipv6_subnet_and_public_ipv6():
    """IPv6-only leases all have the IPv4 half 0.0.0.0/0 and PublicIP 0.0.0.0: the status names
    them by their IPv6 subnet and PublicIPv6 (docs/flannel-compat.md §"IPv6-only")."""
    def v6only(sn6, ip6):
        return Lease(ipaddress.ip_network("0.0.0.0/0"), LeaseAttrs(ipaddress.ip_address("0.0.0.0"), "host-gw",
                                                                   None, ipaddress.ip_address(ip6)),
                     None, ipv6_subnet=ipaddress.ip_network(sn6))
    st = State(ready=True, started=time.time(), lease=v6only("fc00:5:0:9::/64", "fd00:2::a"),
               backend_type="host-gw", peers=[v6only("fc00:5:0:43::/64", "fd00:2::c"),
                                              v6only("fc00:5:0:7::/64", "fd00:2::b")])
    doc = status_doc(st)
    assert (doc["lease"]["subnet"], doc["lease"]["public_ip"]) == ("fc00:5:0:9::/64", "fd00:2::a")
    assert [(p["subnet"], p["public_ip"]) for p in doc["peers"]] == [("fc00:5:0:7::/64", "fd00:2::b"),
                                                                    ("fc00:5:0:43::/64", "fd00:2::c")]


def test_a_dual_stack_lease_shows_both_halves():
    """A dual-stack lease keeps its IPv4 name and adds its IPv6 subnet and PublicIPv6, in the
    JSON and in the table (a peer without an IPv6 half shows "-")."""
    def dual(sn, ip, sn6, ip6):
        return Lease(ipaddress.ip_network(sn), LeaseAttrs(ipaddress.ip_address(ip), "vxlan", None,
                                                          ipaddress.ip_address(ip6)),
                     None, ipv6_subnet=ipaddress.ip_network(sn6))
    own = dual("10.10.16.0/20", "192.0.2.10", "fc00:10:0:1::/64", "fd00:2::a")
    peers = [dual("10.10.32.0/20", "192.0.2.11", "fc00:10:0:2::/64", "fd00:2::b"),
             _lease("10.10.48.0/20", "192.0.2.12")]
    st = State(ready=True, started=time.time(), lease=own, backend_type="vxlan", peers=peers)
    doc = status_doc(st)
    assert {k: doc["lease"][k] for k in ("subnet", "public_ip", "ipv6_subnet", "public_ipv6")} == \
        {"subnet": "10.10.16.0/20", "public_ip": "192.0.2.10", "ipv6_subnet": "fc00:10:0:1::/64",
         "public_ipv6": "fd00:2::a"}
    assert [(p["subnet"], p["ipv6_subnet"], p["public_ipv6"]) for p in doc["peers"]] == \
        [("10.10.32.0/20", "fc00:10:0:2::/64", "fd00:2::b"), ("10.10.48.0/20", None, None)]
    text = format_status(doc)
    assert "lease     10.10.16.0/20  public IP 192.0.2.10  IPv6 fc00:10:0:1::/64  public IPv6 fd00:2::a" in text
    rows = [line.split() for line in text.splitlines()]
    assert ["PEER", "SUBNET", "PUBLIC", "IP", "IPV6", "SUBNET", "PUBLIC", "IPV6", "LEASE", "EXPIRES"] in rows
    assert ["10.10.32.0/20", "192.0.2.11", "fc00:10:0:2::/64", "fd00:2::b", "never"] in rows
    assert ["10.10.48.0/20", "192.0.2.12", "-", "-", "never"] in rows
    # an IPv4-only cluster's table is as before: no IPv6 columns
    assert "IPV6" not in format_status(status_doc(_state(False)))

