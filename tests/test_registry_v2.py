"""EtcdV2Registry against a real etcd 3.4 started with --enable-v2=true: the config written with
`ETCDCTL_API=2 etcdctl set`, flannel v0.6-v0.13's calls and bytes, reservations, the watch and its
actions, short-TTL renewal by the lease keeper, and lease races (docs/flannel-compat.md §"The etcd
v2 store")."""
from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time

import pytest

from fastflannel.agent import registry_v2, subnets
from fastflannel.agent.config import parse_config
from fastflannel.agent.errors import OutOfSubnets, SubnetExists
from fastflannel.agent.etcd_options import EtcdOptions
from fastflannel.agent.lease import LeaseAttrs, LeaseEvent
from fastflannel.agent.registry_v2 import EtcdV2Registry, node_expiration, parse_rfc3339
from fastflannel.agent.subnets import LeaseKeeper, SubnetManager
from fastflannel.lab.cluster import seed_config
from support.v2store import PREFIX, V2Etcd, v2_leases, v2_node, v2_request, v2_set
from support.watching import LeaseWatch

pytestmark = pytest.mark.etcd

NET = ipaddress.IPv4Network("10.5.34.0/24")
NET2 = ipaddress.IPv4Network("10.5.35.0/24")
VX = LeaseAttrs(ipaddress.IPv4Address("192.168.64.3"), "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"})
UDP = LeaseAttrs(ipaddress.IPv4Address("192.168.64.4"))
# flannel v0.13.0 json.Marshal of subnet.LeaseAttrs{PublicIP, BackendType, BackendData} with
# vxlanLeaseAttrs{VtepMAC} (subnet/subnet.go, backend/vxlan/vxlan.go at v0.13.0; see test_lease_v2_format.py).
VX_V013 = '{"PublicIP":"192.168.64.3","BackendType":"vxlan","BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44"}}'
UDP_V013 = '{"PublicIP":"192.168.64.4"}'
DAY_S = 86400


def _key(net) -> str:
    return f"{PREFIX}/subnets/{net.network_address}-{net.prefixlen}"


@pytest.fixture
def v2etcd(etcd_required):
    e = V2Etcd()
    e.start()
    yield e
    e.remove()


@pytest.fixture
def reg(v2etcd):
    r = EtcdV2Registry(EtcdOptions(endpoints=[v2etcd.url], timeout_s=3))
    r.connect()
    yield r
    r.close()


@pytest.fixture
def watch(reg):
    made: list[LeaseWatch] = []

    def start(revision: int) -> LeaseWatch:
        w = LeaseWatch(reg, revision, no_relist=True)
        made.append(w)
        return w
    yield start
    for w in made:
        w.close()


# ---- config ----------------------------------------------------------------------------------

def test_config_set_with_etcdctl_v2_is_read(v2etcd, reg):
    assert reg.get_network_config() is None
    cfg = seed_config("vxlan")
    v2etcd.ctl2("set", f"{PREFIX}/config", cfg)         # the seed's command, ETCDCTL_API=2
    assert reg.get_network_config() == cfg
    assert parse_config(reg.get_network_config()).backend_type == "vxlan"
    assert reg.config_from_v2_store() == cfg


# ---- create / update / delete ----------------------------------------------------------------

def test_create_writes_flannel_v013_bytes_with_day_ttl(v2etcd, reg):
    before = time.time()
    lease = reg.create_lease(NET, VX, DAY_S)
    assert lease.subnet == NET and lease.attrs == VX
    assert before + DAY_S - 5 <= lease.expiration <= time.time() + DAY_S + 1
    node = v2_node(v2etcd.url, _key(NET))
    assert node["value"] == VX_V013
    assert DAY_S - 5 <= node["ttl"] <= DAY_S and "expiration" in node
    assert v2etcd.ctl2("get", _key(NET)).rstrip("\n") == VX_V013
    reg.create_lease(NET2, UDP, DAY_S)
    assert v2_node(v2etcd.url, _key(NET2))["value"] == UDP_V013
    # The v3 keyspace stays untouched.
    assert v2etcd.etcdctl("get", "--prefix", "/coreos.com").stdout == ""


def _actions(url: str, since: int, n: int) -> list[tuple[str, str]]:
    """The next n (action, key) events under <prefix>/subnets after etcd index `since`."""
    out = []
    for _ in range(n):
        status, body, _ = v2_request(url, "GET", f"{PREFIX}/subnets", wait="true", recursive="true",
                                     waitIndex=str(since + 1))
        assert status == 200, body
        out.append((body["action"], body["node"]["key"].rsplit("/", 1)[1]))
        since = body["node"]["modifiedIndex"]
    return out


def test_create_race_renewal_and_reservation_use_flannels_calls(v2etcd, reg):
    _, start = reg.list_leases()
    reg.create_lease(NET, VX, 60)
    with pytest.raises(SubnetExists):
        reg.create_lease(NET, UDP, DAY_S)                       # prevExist=false: the loser
    assert v2_node(v2etcd.url, _key(NET))["value"] == VX_V013
    renewed = reg.update_lease(NET, VX, DAY_S)                   # prevExist=true, a fresh TTL
    node = v2_node(v2etcd.url, _key(NET))
    assert node["ttl"] > 60 and renewed.expiration > time.time() + DAY_S - 10
    reg.delete_lease(NET)
    reg.update_lease(NET, UDP, DAY_S)                            # vanished: created again
    # The update is an "update" (prevExist=true), the vanished key a "create" (prevExist=false).
    assert _actions(v2etcd.url, start, 4) == [("create", "10.5.34.0-24"), ("update", "10.5.34.0-24"),
                                              ("delete", "10.5.34.0-24"), ("create", "10.5.34.0-24")]


def test_reservation_stays_a_reservation(v2etcd, reg):
    v2etcd.ctl2("set", _key(NET), UDP_V013)                     # an admin's reservation: no TTL
    (lease,), _ = reg.list_leases()
    assert lease.subnet == NET and lease.expiration is None
    cfg = parse_config('{"Network": "10.5.0.0/16"}')
    mgr = SubnetManager(reg, cfg, UDP.public_ip)
    got = mgr.acquire(UDP)
    assert got.subnet == NET and got.expiration is None
    node = v2_node(v2etcd.url, _key(NET))
    assert "ttl" not in node and "expiration" not in node and node["value"] == UDP_V013
    assert mgr.renew(got) is got                                 # never renewed


def test_get_and_delete(reg):
    assert reg.get_lease(NET) is None
    reg.create_lease(NET, VX, DAY_S)
    got = reg.get_lease(NET)
    assert got.attrs.backend_data == {"VtepMAC": "c6:d2:32:6f:8f:44"} and got.expiration > time.time() + 3600
    reg.delete_lease(NET)
    reg.delete_lease(NET)                                        # absent: no error
    assert reg.get_lease(NET) is None


# ---- list ------------------------------------------------------------------------------------

def test_list_in_key_order_at_the_read_index_and_skips_bad_nodes(v2etcd, reg, caplog):
    status, body, headers = v2_request(v2etcd.url, "GET", f"{PREFIX}/subnets")
    assert status == 404
    assert reg.list_leases() == ([], int(headers["X-Etcd-Index"]))  # flannel: the error's index
    for i in (7, 3, 12, 1):
        reg.create_lease(ipaddress.IPv4Network(f"10.5.{i}.0/24"), UDP, DAY_S)
    v2_set(v2etcd.url, f"{PREFIX}/subnets/not-a-subnet", UDP_V013)
    v2_set(v2etcd.url, f"{PREFIX}/subnets/10.5.9.0-24", "not json")
    v2_request(v2etcd.url, "PUT", f"{PREFIX}/subnets/adir", dir="true")
    with caplog.at_level(logging.WARNING, logger="fastflannel.registry"):
        leases, index = reg.list_leases()
    assert [str(x.subnet) for x in leases] == ["10.5.1.0/24", "10.5.12.0/24", "10.5.3.0/24", "10.5.7.0/24"]
    _, _, headers = v2_request(v2etcd.url, "GET", f"{PREFIX}/subnets")
    assert index == int(headers["X-Etcd-Index"])
    assert all(x.attrs == UDP and x.expiration > time.time() + DAY_S - 10 for x in leases)
    bad = [r.getMessage() for r in caplog.records if "Ignoring bad subnet node" in r.getMessage()]
    assert len(bad) == 3, bad


def test_expiration_from_ttl_or_expiration():
    assert node_expiration({"ttl": 30, "expiration": "2000-01-01T00:00:00Z"}, 1000.0) == 1030.0
    assert parse_rfc3339("2026-12-01T10:53:31.407100781Z") == pytest.approx(1796122411.4071008)
    assert parse_rfc3339("2026-12-01T11:53:31+01:00") == 1796122411
    assert node_expiration({"expiration": "2026-12-01T10:53:31Z"}, 0) == 1796122411
    assert node_expiration({"key": "k"}, 5.0) is None                      # no TTL: a reservation


# ---- watch -----------------------------------------------------------------------------------

def test_watch_maps_every_action(v2etcd, reg, watch):
    _, index = reg.list_leases()
    w = watch(index)
    url, k1, k2 = v2etcd.url, _key(NET), _key(NET2)
    v2etcd.ctl2("set", k1, VX_V013)                                       # set
    v2etcd.ctl2("mk", k2, UDP_V013)                                       # create
    v2etcd.ctl2("update", k1, UDP_V013)                                   # update
    v2_set(url, k2, VX_V013, prevValue=UDP_V013)                          # compareAndSwap
    v2_set(url, f"{PREFIX}/subnets/junk", "x")                           # skipped
    v2_set(url, f"{PREFIX}/config", "{}")                                 # outside the watch
    assert v2_request(url, "DELETE", k2, prevValue=VX_V013)[0] == 200     # compareAndDelete
    v2etcd.ctl2("rm", k1)                                                 # delete
    v2etcd.ctl2("set", "--ttl", "1", k1, UDP_V013)                        # set ... then expire
    evs = w.events(7, timeout=15)
    assert [(e.kind, str(e.lease.subnet)) for e in evs] == [
        ("added", "10.5.34.0/24"), ("added", "10.5.35.0/24"), ("added", "10.5.34.0/24"),
        ("added", "10.5.35.0/24"), ("removed", "10.5.35.0/24"), ("removed", "10.5.34.0/24"),
        ("added", "10.5.34.0/24")]
    assert evs[0].lease.attrs == LeaseAttrs(VX.public_ip, "vxlan", {"VtepMAC": "c6:d2:32:6f:8f:44"})
    assert evs[0].lease.expiration is None and evs[6].lease.expiration <= time.time() + 2
    assert evs[4].lease.attrs is None                                     # a removal carries the key only
    (expired,) = w.events(1, timeout=10)
    assert (expired.kind, expired.lease.subnet) == (LeaseEvent.REMOVED, NET)
    time.sleep(0.5)
    assert w.q.empty(), "no event may come twice"


def test_watch_from_an_old_index_replays_history_in_order(v2etcd, reg, watch):
    _, index = reg.list_leases()
    for i in range(5):
        reg.create_lease(ipaddress.IPv4Network(f"10.5.{i}.0/24"), UDP, DAY_S)
    w = watch(index)
    assert [str(e.lease.subnet) for e in w.events(5)] == [f"10.5.{i}.0/24" for i in range(5)]
    time.sleep(0.5)
    assert w.q.empty()


def test_watch_returns_promptly_after_stop(reg, watch):
    _, index = reg.list_leases()
    w = watch(index)
    time.sleep(0.5)                      # blocked inside the long poll
    assert not w.finished.is_set()
    assert w.close() < 1.0 and w.finished.is_set()
    stop = threading.Event()
    stop.set()
    assert list(reg.watch_leases(0, stop)) == []


def test_idle_watch_keeps_up_with_a_busy_store(v2etcd, reg, watch, monkeypatch):
    """Writes elsewhere in the store (1,500 here) push an idle watch's index out of the 1,000
    events etcd keeps unless each idle poll moves its cursor to the index it began at."""
    monkeypatch.setattr(registry_v2, "WATCH_WINDOW_S", 0.5)
    _, index = reg.list_leases()
    w = watch(index)
    for _ in range(3):
        for i in range(500):
            v2_set(v2etcd.url, "/elsewhere/k", str(i))
        time.sleep(1.5)                  # a fresh idle poll begins after every burst
    for i in range(3):
        reg.create_lease(ipaddress.IPv4Network(f"10.5.{i}.0/24"), UDP, DAY_S)
    assert [str(e.lease.subnet) for e in w.events(3)] == ["10.5.0.0/24", "10.5.1.0/24", "10.5.2.0/24"]


def test_removing_the_subnets_directory_relists(v2etcd, reg, watch):
    reg.create_lease(NET, VX, DAY_S)
    leases, index = reg.list_leases()
    w = watch(index)
    v2etcd.ctl2("rm", "--recursive", f"{PREFIX}/subnets")   # one event, for the directory
    (b,) = w.batches(1)
    assert b.snapshot == [] and b.events == []
    reg.create_lease(NET2, UDP, DAY_S)
    (ev,) = w.events(1)
    assert ev.kind == LeaseEvent.ADDED and ev.lease.subnet == NET2


# ---- keeping a lease with a short TTL --------------------------------------------------------

def test_keeper_renews_a_short_ttl_lease_until_stopped(v2etcd, reg, monkeypatch):
    monkeypatch.setattr(subnets, "SUBNET_TTL_S", 4)         # 24 h in production
    cfg = parse_config('{"Network": "10.5.0.0/16"}')
    mgr = SubnetManager(reg, cfg, UDP.public_ip, renew_margin_s=2)
    lease = mgr.acquire(UDP)
    assert 2 <= v2_node(v2etcd.url, _key(lease.subnet))["ttl"] <= 4
    keeper, stop = LeaseKeeper(mgr, lease), threading.Event()
    t = threading.Thread(target=keeper.run, args=(stop,), daemon=True)
    t.start()
    indexes = set()
    try:
        t_end = time.monotonic() + 12                        # three TTLs
        while time.monotonic() < t_end:
            node = v2_node(v2etcd.url, _key(lease.subnet))
            assert node is not None, "the lease expired although it was being renewed"
            indexes.add(node["modifiedIndex"])
            time.sleep(0.2)
    finally:
        stop.set()
        t.join(5)
    assert len(indexes) >= 5, indexes                        # a renewal about every 2 s
    deadline = time.monotonic() + 8
    while v2_node(v2etcd.url, _key(lease.subnet)) is not None:      # not renewed: gone in <= 4 s
        assert time.monotonic() < deadline, "a stopped keeper's lease did not expire"
        time.sleep(0.2)


# ---- races -----------------------------------------------------------------------------------

def test_many_hosts_race_for_few_subnets(v2etcd):
    """Eight hosts, three subnets, every host starting with the same random pick: each subnet
    goes to exactly one host, the others are told they are out of subnets."""
    cfg = parse_config('{"Network": "10.9.0.0/16", "SubnetLen": 24, "SubnetMin": "10.9.1.0", '
                       '"SubnetMax": "10.9.3.0"}')
    hosts = [ipaddress.IPv4Address(f"192.0.2.{10 + i}") for i in range(8)]
    barrier = threading.Barrier(len(hosts))
    results: dict = {}
    races_lost = []

    class Log(logging.LoggerAdapter):
        def info(self, msg, *args, **kw):
            if msg.startswith("Lost a race"):
                races_lost.append(1)

    def host(ip):
        r = EtcdV2Registry(EtcdOptions(endpoints=[v2etcd.url], timeout_s=5))
        r.connect()
        mgr = SubnetManager(r, cfg, ip, rng=random.Random(7), log=Log(logging.getLogger("race"), {}))
        barrier.wait()
        try:
            results[ip] = mgr.acquire(LeaseAttrs(ip, "host-gw")).subnet
        except OutOfSubnets as e:
            results[ip] = e
    threads = [threading.Thread(target=host, args=(ip,)) for ip in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = {ip: s for ip, s in results.items() if isinstance(s, ipaddress.IPv4Network)}
    assert len(results) == 8 and len(won) == 3 and len(set(won.values())) == 3, results
    assert all(isinstance(results[ip], OutOfSubnets) for ip in set(hosts) - set(won))
    stored = v2_leases(v2etcd.url)
    assert {k: n["value"] for k, n in stored.items()} == {
        f"{s.network_address}-24": f'{{"PublicIP":"{ip}","BackendType":"host-gw"}}' for ip, s in won.items()}
    assert races_lost, "the hosts never collided: the test did not race"
