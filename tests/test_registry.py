"""EtcdRegistry against a real etcd v3 server (FLANNEL.md §1): formats, TTLs, races, watch."""
from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import pytest

from fastflannel.agent.errors import EtcdUnreachable, RegistryError, SubnetExists
from fastflannel.agent.lease import LeaseAttrs, LeaseEvent, encode_attrs
from fastflannel.agent.registry import EtcdOptions, EtcdRegistry
from fastflannel.lab.etcd import EtcdMember, EtcdServer, etcdctl
from support.watching import LeaseWatch

pytestmark = pytest.mark.etcd

PREFIX = "/coreos.com/network"
NET = ipaddress.IPv4Network("10.5.34.0/24")
NET2 = ipaddress.IPv4Network("10.5.35.0/24")
VX = LeaseAttrs(ipaddress.IPv4Address("192.168.64.3"), "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"})
UDP = LeaseAttrs(ipaddress.IPv4Address("192.168.64.4"))
DAY_S = 86400


def _ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stderr
    return p.stdout


def _key(net, prefix=PREFIX) -> str:
    return f"{prefix}/subnets/{net.network_address}-{net.prefixlen}"


def _key_lease_id(url: str, key: str) -> int:
    out = json.loads(_ok(etcdctl(url, "get", key, "-w", "json")))
    return int(out["kvs"][0].get("lease", 0))


def _lease_ids(url: str) -> set[int]:
    lines = _ok(etcdctl(url, "lease", "list")).split()
    return {int(x, 16) for x in lines[3:]}   # "found N leases" then one hex id per line


@pytest.fixture
def reg(etcd_server):
    r = EtcdRegistry(EtcdOptions(endpoints=[etcd_server], timeout_s=3))
    r.connect()
    yield r
    r.close()


@pytest.fixture
def watcher(reg):
    made = []

    def start(revision):
        w = LeaseWatch(reg, revision)
        made.append(w)
        return w
    yield start
    for w in made:
        w.close()


# ---- config ----------------------------------------------------------------------------------

def test_config_missing_then_present(etcd_server, reg):
    assert reg.get_network_config() is None
    cfg = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'
    _ok(etcdctl(etcd_server, "put", f"{PREFIX}/config", cfg))
    assert reg.get_network_config() == cfg


def test_config_not_in_v2_store_without_enable_v2(etcd_server, reg):
    _ok(etcdctl(etcd_server, "put", f"{PREFIX}/config", "{}"))
    assert reg.config_in_v2_store() is False


def test_prefix_option_with_trailing_slash(etcd_server):
    r = EtcdRegistry(EtcdOptions(endpoints=[etcd_server], prefix="/custom/net/"))
    r.connect()
    try:
        _ok(etcdctl(etcd_server, "put", "/custom/net/config", "{}"))
        assert r.get_network_config() == "{}"
        r.create_lease(NET, VX, DAY_S)
        assert _ok(etcdctl(etcd_server, "get", "--print-value-only", _key(NET, "/custom/net")))
        assert _ok(etcdctl(etcd_server, "get", "--prefix", "--keys-only", PREFIX)) == ""
    finally:
        r.close()
    default = EtcdRegistry(EtcdOptions(endpoints=[etcd_server]))
    default.connect()
    assert default.list_leases()[0] == [] and default.get_network_config() is None
    default.close()


# ---- create / update / delete ----------------------------------------------------------------

def test_create_writes_flannel_bytes_with_day_ttl(etcd_server, reg):
    before = time.time()
    lease = reg.create_lease(NET, VX, DAY_S)
    assert lease.subnet == NET and lease.attrs == VX
    assert before + DAY_S - 5 <= lease.expiration <= time.time() + DAY_S + 1
    value = _ok(etcdctl(etcd_server, "get", "--print-value-only", _key(NET)))
    assert value.rstrip("\n").encode() == encode_attrs(VX)
    assert value.startswith('{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",')
    lid = _key_lease_id(etcd_server, _key(NET))
    assert lid != 0
    ttl = json.loads(_ok(etcdctl(etcd_server, "lease", "timetolive", "-w", "json", f"{lid:x}")))
    assert ttl["granted-ttl"] == DAY_S and DAY_S - 10 <= ttl["ttl"] <= DAY_S


def test_second_create_raises_and_revokes_its_lease(etcd_server, reg):
    reg.create_lease(NET, VX, DAY_S)
    first_lease = _key_lease_id(etcd_server, _key(NET))
    assert _lease_ids(etcd_server) == {first_lease}
    with pytest.raises(SubnetExists):
        reg.create_lease(NET, UDP, DAY_S)
    assert _ok(etcdctl(etcd_server, "get", "--print-value-only", _key(NET))).rstrip("\n").encode() \
        == encode_attrs(VX)
    assert _key_lease_id(etcd_server, _key(NET)) == first_lease
    assert _lease_ids(etcd_server) == {first_lease}      # the loser's grant was revoked


def test_update_renews_with_a_fresh_lease(etcd_server, reg):
    reg.create_lease(NET, VX, DAY_S)
    old = _key_lease_id(etcd_server, _key(NET))
    lease = reg.update_lease(NET, UDP, DAY_S)
    new = _key_lease_id(etcd_server, _key(NET))
    assert new not in (0, old) and lease.expiration > time.time() + DAY_S - 10
    assert _ok(etcdctl(etcd_server, "get", "--print-value-only", _key(NET))).rstrip("\n") \
        == '{"PublicIP":"192.168.64.4","PublicIPv6":null}'


def test_update_with_ttl_zero_keeps_a_reservation(etcd_server, reg):
    _ok(etcdctl(etcd_server, "put", _key(NET), encode_attrs(VX).decode()))   # admin reservation
    lease = reg.update_lease(NET, UDP, 0)
    assert lease.expiration is None
    assert _key_lease_id(etcd_server, _key(NET)) == 0
    leases, _ = reg.list_leases()
    assert [(x.subnet, x.attrs, x.expiration) for x in leases] == [(NET, UDP, None)]
    assert reg.get_lease(NET).expiration is None


def test_create_with_ttl_zero_makes_a_reservation(etcd_server, reg):
    lease = reg.create_lease(NET, UDP, 0)
    assert lease.expiration is None and _key_lease_id(etcd_server, _key(NET)) == 0
    assert _lease_ids(etcd_server) == set()
    with pytest.raises(SubnetExists):
        reg.create_lease(NET, VX, 0)


def test_get_and_delete_lease(reg):
    assert reg.get_lease(NET) is None
    reg.create_lease(NET, VX, DAY_S)
    got = reg.get_lease(NET)
    assert got.attrs == VX and got.expiration > time.time() + DAY_S - 10
    reg.delete_lease(NET)
    assert reg.get_lease(NET) is None


# ---- list ------------------------------------------------------------------------------------

def test_list_skips_bad_key_and_bad_value(etcd_server, reg, caplog):
    reg.create_lease(NET, VX, DAY_S)
    _ok(etcdctl(etcd_server, "put", f"{PREFIX}/subnets/not-a-subnet", encode_attrs(VX).decode()))
    _ok(etcdctl(etcd_server, "put", _key(NET2), "not json"))
    with caplog.at_level(logging.WARNING, logger="fastflannel.registry"):
        leases, rev = reg.list_leases()
    assert [x.subnet for x in leases] == [NET]
    assert leases[0].attrs == VX
    assert rev >= 3
    bad = [r.getMessage() for r in caplog.records if "Ignoring bad subnet node" in r.getMessage()]
    assert len(bad) == 2


def test_list_asks_each_etcd_lease_ttl_once(etcd_server, reg):
    out = _ok(etcdctl(etcd_server, "lease", "grant", "600"))
    lid = out.split()[1]                                  # "lease 694d... granted with TTL(600s)"
    for net in (NET, NET2):
        _ok(etcdctl(etcd_server, "put", "--lease", lid, _key(net), encode_attrs(UDP).decode()))
    reg.create_lease(ipaddress.IPv4Network("10.5.36.0/24"), VX, DAY_S)
    calls = []
    stub = reg._client.leasestub
    real = stub.LeaseTimeToLive
    stub.LeaseTimeToLive = lambda req, *a, **kw: calls.append(req) or real(req, *a, **kw)
    leases, _ = reg.list_leases()
    assert len(leases) == 3 and len(calls) == 2
    # Only the TTL: the lease's keys would make every reply as long as the keys on the lease.
    assert not any(req.keys for req in calls)
    by_net = {x.subnet: x.expiration for x in leases}
    assert by_net[NET] == by_net[NET2] and time.time() + 590 < by_net[NET] <= time.time() + 600


# ---- watch -----------------------------------------------------------------------------------

def test_watch_reports_put_and_delete(etcd_server, reg, watcher):
    _, rev = reg.list_leases()
    w = watcher(rev)
    _ok(etcdctl(etcd_server, "put", _key(NET), encode_attrs(VX).decode()))
    _ok(etcdctl(etcd_server, "put", f"{PREFIX}/subnets/junk", "x"))           # skipped
    _ok(etcdctl(etcd_server, "put", f"{PREFIX}/config", "{}"))                # outside the watch
    _ok(etcdctl(etcd_server, "del", _key(NET)))
    added, removed = w.events(2)
    assert added.kind == LeaseEvent.ADDED and added.lease.subnet == NET and added.lease.attrs == VX
    assert added.lease.expiration is None                                       # no etcd lease
    assert removed.kind == LeaseEvent.REMOVED and removed.lease.subnet == NET
    assert removed.lease.attrs is None


def test_watch_added_event_has_expiration(reg, watcher):
    _, rev = reg.list_leases()
    w = watcher(rev)
    reg.create_lease(NET, VX, DAY_S)
    (ev,) = w.events(1)
    assert ev.kind == LeaseEvent.ADDED and ev.lease.expiration > time.time() + DAY_S - 10


def test_watch_returns_promptly_after_stop(reg, watcher):
    _, rev = reg.list_leases()
    w = watcher(rev)
    time.sleep(0.5)                      # let it block inside the stream
    assert not w.finished.is_set()
    assert w.close() < 1.0 and w.finished.is_set()


def test_watch_with_stop_already_set_returns_at_once(reg):
    stop = threading.Event()
    stop.set()
    assert list(reg.watch_leases(0, stop)) == []


def test_watch_recovers_from_compaction_without_looping(etcd_server, reg, watcher):
    reg.create_lease(NET, VX, DAY_S)
    _, old_rev = reg.list_leases()
    reg.update_lease(NET, UDP, DAY_S)
    reg.create_lease(NET2, VX, DAY_S)
    _, now_rev = reg.list_leases()
    _ok(etcdctl(etcd_server, "compaction", str(now_rev)))
    lists, streams = [], []
    real_list, real_stream = reg.list_leases, reg._watch_stream
    reg.list_leases = lambda: lists.append(1) or real_list()
    reg._watch_stream = lambda *a: streams.append(a[0]) or real_stream(*a)
    w = watcher(old_rev)
    (first,) = w.batches(1)
    assert first.snapshot is not None and first.events == []
    assert [(x.subnet, x.attrs) for x in first.snapshot] == [(NET, UDP), (NET2, VX)]   # key order
    assert first.revision == now_rev
    reg.delete_lease(NET2)
    (ev,) = w.events(1)
    assert ev.kind == LeaseEvent.REMOVED and ev.lease.subnet == NET2
    time.sleep(0.5)
    assert len(lists) == 1 and streams == [old_rev + 1, now_rev + 1]


# ---- connection ------------------------------------------------------------------------------

def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_endpoint_fails_fast_with_the_url():
    url = _dead_url()
    r = EtcdRegistry(EtcdOptions(endpoints=[url], timeout_s=2))
    t0 = time.monotonic()
    with pytest.raises(EtcdUnreachable) as ei:
        r.connect()
    assert time.monotonic() - t0 < 5
    msg = str(ei.value)
    assert msg.startswith(f"cannot reach etcd at {url}") and "\n" not in msg


def test_connect_uses_first_answering_endpoint(etcd_server):
    r = EtcdRegistry(EtcdOptions(endpoints=[_dead_url(), etcd_server], timeout_s=2))
    r.connect()
    try:
        assert r._url == etcd_server and r.get_network_config() is None
    finally:
        r.close()


def test_http_without_certificates_warns(etcd_server, caplog):
    r = EtcdRegistry(EtcdOptions(endpoints=[etcd_server], cafile="/nonexistent/ca.pem"))
    with caplog.at_level(logging.WARNING, logger="fastflannel.registry"):
        r.connect()
    r.close()
    assert any("no certificate provided" in x.getMessage() for x in caplog.records)


# ---- reconnect after an etcd restart (own server: same port, same data dir) -----------------

class RestartableEtcd(EtcdServer):
    """An etcd of our own (the lab's launcher): restartable on the same port and data dir,
    optionally TLS or v2."""

    def __init__(self, tls: bool = False, extra: tuple[str, ...] = ()):
        self.dir = tempfile.mkdtemp(prefix="ff-etcd-restart-")
        args, ctl = list(extra), []       # ctl: etcdctl flags (client certificates)
        if tls:
            self.pki = _make_pki(os.path.join(self.dir, "pki"))
            args += ["--cert-file", self.pki["server.crt"], "--key-file", self.pki["server.key"],
                     "--trusted-ca-file", self.pki["ca.crt"], "--client-cert-auth"]
            ctl = ["--cacert", self.pki["ca.crt"], "--cert", self.pki["client.crt"],
                   "--key", self.pki["client.key"]]
        super().__init__(EtcdMember.local(self.dir, scheme="https" if tls else "http", extra_args=args,
                                          ctl_flags=ctl))


def _make_pki(d: str) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    os.makedirs(d)
    f = {n: os.path.join(d, n) for n in ("ca.crt", "ca.key", "server.crt", "server.key",
                                         "client.crt", "client.key", "san.cnf")}

    def run(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ff-test-ca",
        "-keyout", f["ca.key"], "-out", f["ca.crt"])
    with open(f["san.cnf"], "w") as fh:
        fh.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for who in ("server", "client"):
        csr = os.path.join(d, who + ".csr")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f[who + ".key"],
            "-out", csr)
        run("x509", "-req", "-in", csr, "-CA", f["ca.crt"], "-CAkey", f["ca.key"], "-CAcreateserial",
            "-days", "1", "-extfile", f["san.cnf"], "-out", f[who + ".crt"])
    return f


@pytest.fixture
def restartable_etcd(etcd_server):        # etcd_server: skips with its reason when etcd is missing
    e = RestartableEtcd()
    e.start()
    yield e
    e.stop()
    subprocess.run(["rm", "-rf", e.dir])


@pytest.mark.slow
def test_watch_resumes_after_etcd_restart(restartable_etcd):
    e = restartable_etcd
    r = EtcdRegistry(EtcdOptions(endpoints=[e.url], timeout_s=2))
    r.connect()
    _, rev = r.list_leases()
    w = LeaseWatch(r, rev)
    try:
        r.create_lease(NET, VX, DAY_S)
        assert w.events(1)[0].lease.subnet == NET
        e.stop()
        with pytest.raises(EtcdUnreachable, match=e.url):    # e.g. a renewal during the outage
            r.get_lease(NET)
        time.sleep(0.5)
        e.start()
        _ok(etcdctl(e.url, "put", _key(NET2), encode_attrs(UDP).decode()))
        (ev,) = w.events(1, timeout=20)
        assert ev.kind == LeaseEvent.ADDED and ev.lease.subnet == NET2
        assert r.get_lease(NET2).attrs == UDP        # unary calls work again, too
        assert w.close() < 1.0
    finally:
        w.close()
        r.close()


# ---- authentication --------------------------------------------------------------------------

def test_username_password_and_token_renewal(restartable_etcd):
    url = restartable_etcd.url
    for args in (("user", "add", "root:rootpw"), ("role", "add", "root"),
                 ("user", "grant-role", "root", "root"), ("auth", "enable")):
        _ok(etcdctl(url, *args))
    with pytest.raises(RegistryError, match="authentication failed") as ei:
        EtcdRegistry(EtcdOptions(endpoints=[url], username="root", password="wrong")).connect()
    assert not isinstance(ei.value, EtcdUnreachable)
    r = EtcdRegistry(EtcdOptions(endpoints=[url], username="root", password="rootpw"))
    r.connect()
    try:
        r.create_lease(NET, VX, DAY_S)
        # etcd's simple tokens expire after 5 idle minutes: a stale token must not lock us out.
        r._client.metadata = (("token", "expired.1"),)
        assert r.get_lease(NET).attrs == VX
        _, rev = r.list_leases()
        r._client.metadata = (("token", "expired.2"),)
        w = LeaseWatch(r, rev)
        try:
            _ok(etcdctl(url, "--user", "root:rootpw", "put", _key(NET2), encode_attrs(UDP).decode()))
            (ev,) = w.events(1)
            assert ev.lease.subnet == NET2 and ev.lease.attrs == UDP
        finally:
            assert w.close() < 1.0
    finally:
        r.close()


# ---- several endpoints -----------------------------------------------------------------------

@pytest.mark.slow
def test_fails_over_to_the_next_endpoint(etcd_server, restartable_etcd):
    first = restartable_etcd
    r = EtcdRegistry(EtcdOptions(endpoints=[first.url, etcd_server], timeout_s=2))
    r.connect()
    w = None
    try:
        _ok(etcdctl(first.url, "put", f"{PREFIX}/config", "first"))
        for _ in range(5):   # two separate servers: keep the second one's revision ahead
            _ok(etcdctl(etcd_server, "put", f"{PREFIX}/config", "second"))
        assert r.get_network_config() == "first"
        w = LeaseWatch(r, r.list_leases()[1])
        first.stop()
        try:                     # whichever of the watch or this call notices first switches
            r.get_network_config()
        except EtcdUnreachable as e:
            assert first.url in str(e)
        assert r.get_network_config() == "second"
        _ok(etcdctl(etcd_server, "put", _key(NET), encode_attrs(VX).decode()))
        (ev,) = w.events(1)                                       # the watch moved over too
        assert ev.kind == LeaseEvent.ADDED and ev.lease.subnet == NET
    finally:
        if w is not None:
            assert w.close() < 1.0
        r.close()


# ---- TLS and the v2 store --------------------------------------------------------------------

@pytest.fixture
def own_etcd(etcd_server):
    made = []

    def start(**kw):
        e = RestartableEtcd(**kw)
        made.append(e)
        e.start()
        return e
    yield start
    for e in made:
        e.stop()
        subprocess.run(["rm", "-rf", e.dir])


@pytest.mark.slow
def test_tls_with_client_certificates(own_etcd, caplog):
    e = own_etcd(tls=True)
    _ok(e.etcdctl("put", f"{PREFIX}/config", "tls"))
    pki = e.pki
    r = EtcdRegistry(EtcdOptions(endpoints=[e.url], keyfile=pki["client.key"],
                                 certfile=pki["client.crt"], cafile=pki["ca.crt"]))
    with caplog.at_level(logging.WARNING, logger="fastflannel.registry"):
        r.connect()
    try:
        assert r.get_network_config() == "tls"
        assert not any("no certificate provided" in x.getMessage() for x in caplog.records)
        r.create_lease(NET, VX, DAY_S)
        assert _ok(e.etcdctl("get", "--print-value-only", _key(NET))).rstrip("\n").encode() \
            == encode_attrs(VX)
    finally:
        r.close()
    # flannel: a CA alone is not enough for TLS; it falls back to http, which this server refuses.
    plain = EtcdRegistry(EtcdOptions(endpoints=[e.url], cafile=pki["ca.crt"], timeout_s=2))
    with pytest.raises(RegistryError):
        plain.connect()


def test_config_in_v2_store_detects_an_old_v2_config(own_etcd):
    e = own_etcd(extra=("--enable-v2",))
    r = EtcdRegistry(EtcdOptions(endpoints=[e.url]))
    assert r.config_in_v2_store() is False
    req = urllib.request.Request(f"{e.url}/v2/keys{PREFIX}/config", method="PUT",
                                 data=urllib.parse.urlencode({"value": '{"Network":"10.1.0.0/16"}'}).encode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status in (200, 201)
    assert r.config_in_v2_store() is True
    r.connect()
    assert r.get_network_config() is None        # the v3 keyspace is separate
    r.close()


def test_dual_stack_key_and_value_bytes_in_etcd(reg, etcd_server):
    """What etcd holds is flannel's key and flannel's JSON, byte for byte (tests/test_lease_ipv6.py
    derives the bytes from flannel's structs)."""
    net6 = ipaddress.IPv6Network("fc00:5:0:34::/64")
    attrs = LeaseAttrs(ipaddress.IPv4Address("192.168.64.3"), "host-gw",
                       public_ipv6=ipaddress.IPv6Address("fd00:64::3"))
    reg.create_lease(NET, attrs, DAY_S, net6)
    out = json.loads(_ok(etcdctl(etcd_server, "get", "--prefix", f"{PREFIX}/subnets/", "-w", "json")))
    kvs = [(base64.b64decode(kv["key"]), base64.b64decode(kv["value"])) for kv in out["kvs"]]
    assert kvs == [(b"/coreos.com/network/subnets/10.5.34.0-24&fc00:5:0:34::-64",
                    b'{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"host-gw"}')]
