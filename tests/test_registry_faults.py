"""EtcdRegistry when etcd is far away or stops answering (issue 8, defects 1 and 2).

A real etcd behind tests/support/delayproxy.py: the proxy adds a constant round trip (the kernel
here has no netem) or goes silent (drops every byte, never resets), which is what a member
behind a dead link or a hung member looks like to a client.
"""
from __future__ import annotations

import ipaddress
import logging
import time
import urllib.parse

import pytest

from fastflannel.agent import metrics
from fastflannel.agent.errors import EtcdUnreachable
from fastflannel.agent.lease import LeaseAttrs, LeaseEvent, encode_attrs
from fastflannel.agent.registry import EtcdOptions, EtcdRegistry
from fastflannel.lab.etcd import etcdctl
from support.delayproxy import DelayProxy
from support.watching import LeaseWatch, watch_errors

pytestmark = pytest.mark.etcd

PREFIX = "/coreos.com/network"
NET = ipaddress.IPv4Network("10.5.34.0/24")
UDP = LeaseAttrs(ipaddress.IPv4Address("192.168.64.4"))
DAY_S = 86400
FAR_RTT_S = 0.5             # etcd across regions is 100-300 ms; the issue asks for >= 500 ms
SILENT_DETECT_MAX_S = 10.0  # a dead member must be left within this (issue 8)


def _key(i: int) -> str:
    return f"{PREFIX}/subnets/10.7.{i}.0-24"


def _put(url: str, i: int) -> None:
    p = etcdctl(url, "put", _key(i), encode_attrs(UDP).decode())
    assert p.returncode == 0, p.stderr


def _upstream(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname, parts.port


@pytest.fixture
def proxy(etcd_server):
    """Make a proxy in front of the test etcd: proxy(rtt_s) -> (DelayProxy, its URL)."""
    made = []

    def make(rtt_s: float, port: int = 0):
        p = DelayProxy(("127.0.0.1", port), _upstream(etcd_server), rtt_s).start()
        made.append(p)
        return p, f"http://127.0.0.1:{p.address[1]}"
    yield make
    for p in made:
        p.close()


@pytest.fixture
def registries():
    made = []

    def make(*endpoints: str, timeout_s: float = 5.0) -> EtcdRegistry:
        r = EtcdRegistry(EtcdOptions(endpoints=list(endpoints), timeout_s=timeout_s))
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


# ---- defect 1: a distant etcd ---------------------------------------------------------------

def test_connects_and_watches_at_a_500ms_round_trip(etcd_server, proxy, registries):
    _, far = proxy(FAR_RTT_S)
    reg = registries(far)
    t0 = time.monotonic()
    reg.connect()                       # the first attempt must succeed, not retry forever
    connect_s = time.monotonic() - t0
    print(f"connect at {FAR_RTT_S * 1000:.0f} ms RTT: {connect_s:.2f} s")
    assert connect_s < 5 * FAR_RTT_S + 2
    lease = reg.create_lease(NET, UDP, DAY_S)
    assert lease.subnet == NET
    leases, rev = reg.list_leases()
    assert [x.subnet for x in leases] == [NET]
    w = LeaseWatch(reg, rev)
    try:
        time.sleep(2 * FAR_RTT_S)           # the watch is created, one round trip away
        _put(etcd_server, 1)
        ((_, ev),) = w.timed_events(1, timeout=10)
        assert ev.kind == LeaseEvent.ADDED and str(ev.lease.subnet) == "10.7.1.0/24"
    finally:
        w.close()


# ---- defect 2: a member that stops answering ------------------------------------------------

def test_silent_member_is_left_within_10s_and_the_watch_loses_nothing(
        etcd_server, proxy, registries, caplog):
    p, silent = proxy(0.01)
    reg = registries(silent, etcd_server)
    reg.connect()
    assert reg._url == silent
    _, rev = reg.list_leases()
    w = LeaseWatch(reg, rev)
    try:
        for i in range(3):
            _put(etcd_server, i)
        assert [str(ev.lease.subnet) for _, ev in w.timed_events(3, timeout=5)] == \
            ["10.7.0.0/24", "10.7.1.0/24", "10.7.2.0/24"]
        # Idle under keepalive pings: pinging well under etcd's 5 s minimum would earn a GOAWAY
        # (at the third early ping) and a warning here; the fault suite watches for longer.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fastflannel.registry"):
            time.sleep(13)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        p.silent.set()
        t0 = time.monotonic()
        for i in range(3, 6):               # written while our member says nothing
            _put(etcd_server, i)
        got = w.timed_events(3, timeout=SILENT_DETECT_MAX_S + 5)
        detect_s = got[0][0] - t0
        print(f"silent member left after {detect_s:.2f} s")
        assert [str(ev.lease.subnet) for _, ev in got] == ["10.7.3.0/24", "10.7.4.0/24", "10.7.5.0/24"]
        assert detect_s <= SILENT_DETECT_MAX_S
        assert reg._url == etcd_server
        time.sleep(0.5)
        assert w.q.empty(), "no event may come twice"
    finally:
        w.close()


def test_requests_to_a_silent_member_end_at_their_deadline(etcd_server, proxy, registries):
    p, silent = proxy(0.01)
    reads = registries(silent, etcd_server, timeout_s=2)
    writes = registries(silent, etcd_server, timeout_s=2)
    reads.connect()
    writes.connect()
    p.silent.set()
    t0 = time.monotonic()
    assert reads.get_lease(NET) is None         # a read is repeated on the next member
    assert time.monotonic() - t0 < 2 + 1.5 and reads._url == etcd_server
    t0 = time.monotonic()
    with pytest.raises(EtcdUnreachable, match=silent):  # a grant that may have landed is not
        writes.create_lease(NET, UDP, DAY_S)
    assert time.monotonic() - t0 < 2 + 1.5 and writes._url == etcd_server
    assert writes.create_lease(NET, UDP, DAY_S).subnet == NET      # the caller's retry works
    assert reads.get_lease(NET).attrs == UDP
    # A new registry whose first endpoint is silent connects to the next one within a deadline.
    t0 = time.monotonic()
    late = registries(silent, etcd_server, timeout_s=2)
    late.connect()
    assert late._url == etcd_server and time.monotonic() - t0 < 2 + 1.5


# ---- the operator's view of an outage -------------------------------------------------------

def test_an_outage_logs_one_warning_and_one_line_when_it_ends(etcd_server, proxy, registries, caplog):
    p, url = proxy(0.01)
    reg = registries(url)
    reg.connect()
    _, rev = reg.list_leases()
    w = LeaseWatch(reg, rev)
    try:
        errors_before = watch_errors()
        with caplog.at_level(logging.INFO, logger="fastflannel.registry"):
            time.sleep(0.5)
            port = p.address[1]
            p.close()                    # connections reset, new ones refused: etcd is down
            time.sleep(7)                # several retries with back-off
            assert metrics.ETCD.snapshot()["state"] == "unreachable"   # the watch says so
            proxy(0.01, port=port)       # etcd is back on the same address
            _put(etcd_server, 1)
            ((_, ev),) = w.timed_events(1, timeout=15)
        assert str(ev.lease.subnet) == "10.7.1.0/24"
        lines = [r.getMessage() for r in caplog.records if r.name == "fastflannel.registry"]
        failed = [x for x in lines if x.startswith("watching leases failed")]
        assert len(failed) == 1, lines
        assert len([x for x in lines if x.startswith("watching leases again")]) == 1, lines
        assert watch_errors() > errors_before                 # fastflannel_etcd_watch_reconnects_total
        assert metrics.ETCD.snapshot()["state"] == "connected"
    finally:
        w.close()
