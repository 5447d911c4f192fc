"""EtcdV2Registry when etcd goes away (real etcd 3.4 with --enable-v2=true): the watch after an etcd
restart and after etcd cleared its index (more than 1,000 writes while the watch was away), fail-over
to the next endpoint when the first is dead or silent, deadlines, one log line per outage, and TLS
with a client certificate plus basic auth. A dead or silent member is tests/support/delayproxy.py
in front of the same etcd; the figures are printed (run with -s)."""
from __future__ import annotations

import base64
import http.client
import ipaddress
import logging
import os
import socket
import ssl
import time
import urllib.parse

import pytest

from fastflannel.agent import metrics
from fastflannel.agent.errors import EtcdUnreachable, RegistryError
from fastflannel.agent.etcd_options import EtcdOptions
from fastflannel.agent.lease import LeaseAttrs, LeaseEvent
from fastflannel.agent.registry_v2 import EtcdV2Registry
from support.delayproxy import DelayProxy
from support.v2store import PREFIX, V2Etcd, make_pki, v2_request, v2_set
from support.watching import LeaseWatch, watch_errors

pytestmark = pytest.mark.etcd

UDP = LeaseAttrs(ipaddress.IPv4Address("192.168.64.4"))
UDP_V013 = '{"PublicIP":"192.168.64.4"}'
DAY_S = 86400
HISTORY_EVENTS = 1000           # etcd v2 keeps the last 1,000 events
SILENT_DETECT_MAX_S = 10.0      # a silent member is left within this


def _key(i: int) -> str:
    return f"{PREFIX}/subnets/10.7.{i}.0-24"


@pytest.fixture
def v2etcd(etcd_required):
    made: list[V2Etcd] = []

    def start(**kw) -> V2Etcd:
        e = V2Etcd(**kw)
        made.append(e)
        e.start()
        return e
    yield start
    for e in made:
        e.remove()


@pytest.fixture
def proxy():
    made: list[DelayProxy] = []

    def make(upstream_url: str, port: int = 0) -> tuple[DelayProxy, str]:
        u = urllib.parse.urlsplit(upstream_url)
        p = DelayProxy(("127.0.0.1", port), (u.hostname, u.port), 0.001).start()
        made.append(p)
        return p, f"http://127.0.0.1:{p.address[1]}"
    yield make
    for p in made:
        p.close()


@pytest.fixture
def registries():
    made: list[EtcdV2Registry] = []

    def make(*endpoints: str, **kw) -> EtcdV2Registry:
        r = EtcdV2Registry(EtcdOptions(endpoints=list(endpoints), **kw))
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ---- the watch away: index cleared, etcd restarted -------------------------------------------

def test_watch_relists_after_etcd_cleared_its_index_while_it_was_away(v2etcd, proxy, registries, caplog):
    e = v2etcd()
    p, url = proxy(e.url)
    reg = registries(url, timeout_s=2)
    reg.connect()
    for i in range(3):
        v2_set(e.url, _key(i), UDP_V013, ttl=str(DAY_S))
    _, index = reg.list_leases()
    w = LeaseWatch(reg, index, no_relist=True)
    try:
        time.sleep(0.5)
        port = p.address[1]
        p.close()                               # the watch is away: refused, retrying
        for i in range(HISTORY_EVENTS + 100):   # more writes than etcd remembers
            v2_set(e.url, "/elsewhere/k", str(i))
        v2_request(e.url, "DELETE", _key(1))
        v2_set(e.url, _key(9), UDP_V013, ttl=str(DAY_S))
        with caplog.at_level(logging.INFO, logger="fastflannel.registry"):
            t_back = time.monotonic()
            proxy(e.url, port=port)             # back on the same address
            t, b = w.next(timeout=15)
        relist_s = t - t_back
        print(f"index cleared while away: re-listed {relist_s:.2f} s after etcd was reachable again")
        assert b.snapshot is not None and b.events == []
        assert [str(x.subnet) for x in b.snapshot] == ["10.7.0.0/24", "10.7.2.0/24", "10.7.9.0/24"]
        assert relist_s < 6.0               # one back-off step (at most 5 s) and a listing
        assert any("outdated and cleared" in r.getMessage() for r in caplog.records), caplog.text
        v2_request(e.url, "DELETE", _key(0))
        ((_, ev),) = w.timed_events(1, timeout=10)   # the watch goes on from the listing's index
        assert ev.kind == LeaseEvent.REMOVED and str(ev.lease.subnet) == "10.7.0.0/24"
    finally:
        w.close()


@pytest.mark.slow
def test_watch_survives_an_etcd_restart(v2etcd, registries):
    e = v2etcd()
    reg = registries(e.url, timeout_s=2)
    reg.connect()
    _, index = reg.list_leases()
    w = LeaseWatch(reg, index, no_relist=True)
    try:
        reg.create_lease(ipaddress.IPv4Network("10.7.1.0/24"), UDP, DAY_S)
        assert str(w.timed_events(1, timeout=10)[0][1].lease.subnet) == "10.7.1.0/24"
        e.stop()
        with pytest.raises(EtcdUnreachable, match=e.url):     # e.g. a renewal during the outage
            reg.get_lease(ipaddress.IPv4Network("10.7.1.0/24"))
        time.sleep(1.0)
        e.start()                                              # the same data dir and port
        v2_set(e.url, _key(2), UDP_V013, ttl=str(DAY_S))
        got = w.timed_events(1, timeout=20)
        assert [str(ev.lease.subnet) for _, ev in got] == ["10.7.2.0/24"]
        assert reg.get_lease(ipaddress.IPv4Network("10.7.2.0/24")).attrs == UDP
        time.sleep(0.5)
        assert w.q.empty(), "no event may come twice"
    finally:
        w.close()


def test_an_outage_logs_one_warning_and_one_line_when_it_ends(v2etcd, proxy, registries, caplog):
    e = v2etcd()
    p, url = proxy(e.url)
    reg = registries(url, timeout_s=2)
    reg.connect()
    _, index = reg.list_leases()
    w = LeaseWatch(reg, index, no_relist=True)
    try:
        errors_before = watch_errors()
        with caplog.at_level(logging.INFO, logger="fastflannel.registry"):
            time.sleep(0.5)
            port = p.address[1]
            p.close()
            time.sleep(7)                # several retries with back-off
            assert metrics.ETCD.snapshot()["state"] == "unreachable"   # the watch says so
            proxy(e.url, port=port)
            v2_set(e.url, _key(1), UDP_V013)
            ((_, ev),) = w.timed_events(1, timeout=15)
        assert str(ev.lease.subnet) == "10.7.1.0/24"
        lines = [r.getMessage() for r in caplog.records if r.name == "fastflannel.registry"]
        assert len([x for x in lines if x.startswith("watching leases failed")]) == 1, lines
        assert len([x for x in lines if x.startswith("watching leases again")]) == 1, lines
        assert watch_errors() > errors_before                 # fastflannel_etcd_watch_reconnects_total
        assert metrics.ETCD.snapshot()["state"] == "connected"
    finally:
        w.close()


# ---- several endpoints -----------------------------------------------------------------------

def test_connect_skips_a_dead_endpoint_and_one_without_the_v2_api(v2etcd, etcd_server, registries):
    e = v2etcd()
    reg = registries(_dead_url(), etcd_server, e.url, timeout_s=2)   # etcd_server: no --enable-v2
    reg.connect()
    assert reg.url == e.url and reg.get_network_config() is None
    with pytest.raises(EtcdUnreachable, match="does not serve the etcd v2 API") as ei:
        registries(etcd_server, timeout_s=2).connect()
    assert "\n" not in str(ei.value)


def test_watch_fails_over_when_its_member_dies(v2etcd, proxy, registries):
    e = v2etcd()
    p, first = proxy(e.url)
    reg = registries(first, e.url, timeout_s=5)
    reg.connect()
    assert reg.url == first
    _, index = reg.list_leases()
    w = LeaseWatch(reg, index, no_relist=True)
    try:
        time.sleep(0.5)
        p.close()                         # connections reset, new ones refused
        t0 = time.monotonic()
        v2_set(e.url, _key(1), UDP_V013)
        ((t, ev),) = w.timed_events(1, timeout=10)
        print(f"dead member: the watch moved and delivered after {t - t0:.2f} s")
        assert str(ev.lease.subnet) == "10.7.1.0/24" and reg.url == e.url
        assert t - t0 < 2.0
    finally:
        w.close()


def test_silent_member_is_left_within_10s_and_the_watch_loses_nothing(v2etcd, proxy, registries):
    e = v2etcd()
    p, silent = proxy(e.url)
    reg = registries(silent, e.url)                       # the default 5 s deadline
    reg.connect()
    _, index = reg.list_leases()
    w = LeaseWatch(reg, index, no_relist=True)
    try:
        for i in range(3):
            v2_set(e.url, _key(i), UDP_V013)
        assert [str(ev.lease.subnet) for _, ev in w.timed_events(3, timeout=5)] == \
            ["10.7.0.0/24", "10.7.1.0/24", "10.7.2.0/24"]
        time.sleep(1.0)
        p.silent.set()                    # bytes dropped, connections accepted but never answered
        t0 = time.monotonic()
        for i in range(3, 6):
            v2_set(e.url, _key(i), UDP_V013)
        got = w.timed_events(3, timeout=SILENT_DETECT_MAX_S + 5)
        detect_s = got[0][0] - t0
        print(f"silent member left, events delivered after {detect_s:.2f} s")
        assert [str(ev.lease.subnet) for _, ev in got] == ["10.7.3.0/24", "10.7.4.0/24", "10.7.5.0/24"]
        assert detect_s <= SILENT_DETECT_MAX_S and reg.url == e.url
        time.sleep(0.5)
        assert w.q.empty(), "no event may come twice"
    finally:
        w.close()


def test_requests_to_a_silent_member_end_at_their_deadline(v2etcd, proxy, registries):
    e = v2etcd()
    p, silent = proxy(e.url)
    reads = registries(silent, e.url, timeout_s=2)
    writes = registries(silent, e.url, timeout_s=2)
    reads.connect()
    writes.connect()
    p.silent.set()
    net = ipaddress.IPv4Network("10.7.1.0/24")
    t0 = time.monotonic()
    assert reads.get_lease(net) is None              # a read is repeated on the next member
    assert time.monotonic() - t0 < 2 + 1.5 and reads.url == e.url
    t0 = time.monotonic()
    with pytest.raises(EtcdUnreachable, match=silent):   # a create that may have landed is not
        writes.create_lease(net, UDP, DAY_S)
    assert time.monotonic() - t0 < 2 + 1.5 and writes.url == e.url
    assert writes.create_lease(net, UDP, DAY_S).subnet == net        # the caller's retry works
    t0 = time.monotonic()
    late = registries(silent, e.url, timeout_s=2)
    late.connect()
    assert late.url == e.url and time.monotonic() - t0 < 2 + 1.5


# ---- TLS, client certificates, basic auth ----------------------------------------------------

def _admin(url: str, pki: dict[str, str], method: str, path: str, body: str) -> None:
    """A v2 auth API call with the client certificate, as the root user once auth is on."""
    ctx = ssl.create_default_context(cafile=pki["ca.crt"])
    ctx.load_cert_chain(pki["client.crt"], pki["client.key"])
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=10)
    auth = "Basic " + base64.b64encode(b"root:rootpw").decode()
    c.request(method, path, body=body, headers={"Authorization": auth})
    r = c.getresponse()
    assert r.status in (200, 201), (path, r.status, r.read())
    c.close()


def test_tls_with_client_certificate_and_basic_auth(v2etcd, registries, tmp_path):
    pki = make_pki(os.path.join(tmp_path, "pki"))
    e = v2etcd(pki=pki)
    assert e.url.startswith("https://")
    e.ctl2("set", f"{PREFIX}/config", '{"Network":"10.7.0.0/16"}')
    tls = dict(cafile=pki["ca.crt"], certfile=pki["client.crt"], keyfile=pki["client.key"], timeout_s=3)
    # v2 auth: a root user, auth on, and the guest role (anyone without credentials) emptied.
    _admin(e.url, pki, "PUT", "/v2/auth/users/root", '{"user":"root","password":"rootpw"}')
    _admin(e.url, pki, "PUT", "/v2/auth/enable", "")
    _admin(e.url, pki, "PUT", "/v2/auth/roles/guest",
           '{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}')
    with pytest.raises(RegistryError, match="refused the credentials") as ei:
        registries(e.url, username="root", password="wrong", **tls).connect()
    assert not isinstance(ei.value, EtcdUnreachable)
    with pytest.raises(RegistryError, match="refused the credentials"):
        registries(e.url, **tls).connect()                          # no credentials at all
    with pytest.raises(RegistryError):                               # no client certificate
        registries(e.url, cafile=pki["ca.crt"], username="root", password="rootpw", timeout_s=3).connect()
    with pytest.raises(RegistryError, match="certificate"):          # a server we cannot verify
        registries(e.url, username="root", password="rootpw", timeout_s=3).connect()
    reg = registries(e.url, username="root", password="rootpw", **tls)
    reg.connect()
    assert reg.get_network_config() == '{"Network":"10.7.0.0/16"}'
    _, index = reg.list_leases()
    w = LeaseWatch(reg, index, no_relist=True)
    try:
        reg.create_lease(ipaddress.IPv4Network("10.7.1.0/24"), UDP, DAY_S)
        ((_, ev),) = w.timed_events(1, timeout=10)
        assert ev.kind == LeaseEvent.ADDED and ev.lease.attrs == UDP
    finally:
        w.close()
