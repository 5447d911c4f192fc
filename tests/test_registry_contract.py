"""The Registry contract (agent/registry_api.py) as one sequence, run against the etcd v3 registry
on a real etcd, the etcd v2 registry on a real etcd with --enable-v2, and the in-memory fake the
lease-policy tests use: the fake may only be trusted where it behaves as etcd does."""
from __future__ import annotations

import ipaddress
import time

import pytest

from fastflannel.agent.errors import SubnetExists
from fastflannel.agent.lease import LeaseAttrs, LeaseEvent, decode_attrs, encode_attrs_v2
from fastflannel.agent.registry import EtcdOptions, EtcdRegistry
from fastflannel.agent.registry_api import Registry
from fastflannel.agent.registry_v2 import EtcdV2Registry
from support.fakeregistry import FakeRegistry
from support.v2store import V2Etcd
from support.watching import LeaseWatch

NET = ipaddress.IPv4Network("10.5.34.0/24")
NET2 = ipaddress.IPv4Network("10.5.35.0/24")
VX = LeaseAttrs(ipaddress.IPv4Address("192.168.64.3"), "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"})
UDP = LeaseAttrs(ipaddress.IPv4Address("192.168.64.4"))
DAY_S = 86400
WAIT_S = 10.0


@pytest.fixture(params=["fake", pytest.param("etcd", marks=pytest.mark.etcd),
                        pytest.param("etcd-v2", marks=pytest.mark.etcd)])
def registry(request):
    server = None
    if request.param == "fake":
        r: Registry = FakeRegistry(clock=time.time)
    elif request.param == "etcd":
        r = EtcdRegistry(EtcdOptions(endpoints=[request.getfixturevalue("etcd_server")], timeout_s=3))
    else:                       # the etcd v2 store (flanneld v0.6-v0.13), on etcd --enable-v2=true
        request.getfixturevalue("etcd_required")
        server = V2Etcd()
        server.start()
        r = EtcdV2Registry(EtcdOptions(endpoints=[server.url], timeout_s=3))
    r.connect()
    yield r
    r.close()
    if server is not None:
        server.remove()


def _read_back(registry: Registry, attrs: LeaseAttrs) -> LeaseAttrs:
    """What a read returns for `attrs` written: the same, except on the v2 store, which keeps
    flannel v0.6-v0.13's layout (vxlan BackendData without "VNI", docs/flannel-compat.md §"The
    etcd v2 store")."""
    return decode_attrs(encode_attrs_v2(attrs)) if isinstance(registry, EtcdV2Registry) else attrs


def test_config_absent_is_none(registry):
    assert registry.get_network_config() is None


def test_create_get_list_update_delete(registry):
    assert registry.list_leases()[0] == []
    made = registry.create_lease(NET, VX, DAY_S)
    assert made.subnet == NET and made.attrs == VX and made.expiration is not None
    assert abs(made.expiration - time.time() - DAY_S) < 60
    with pytest.raises(SubnetExists):
        registry.create_lease(NET, UDP, DAY_S)
    got = registry.get_lease(NET)
    vx = _read_back(registry, VX)
    assert got is not None and got.attrs == vx
    registry.create_lease(NET2, UDP, 0)                       # a reservation: no TTL
    leases, rev = registry.list_leases()
    assert [(lease.subnet, lease.attrs) for lease in leases] == [(NET, vx), (NET2, UDP)] and rev > 0
    assert [lease.expiration is None for lease in leases] == [False, True]
    renewed = registry.update_lease(NET, UDP, DAY_S)
    assert renewed.attrs == UDP and registry.get_lease(NET).attrs == UDP
    registry.delete_lease(NET)
    registry.delete_lease(NET)                                 # absent: no error
    assert registry.get_lease(NET) is None
    assert [lease.subnet for lease in registry.list_leases()[0]] == [NET2]


def test_watch_sees_changes_after_the_revision_in_order(registry):
    registry.create_lease(NET2, UDP, DAY_S)                    # before the revision: not seen
    _, rev = registry.list_leases()
    w = LeaseWatch(registry, rev)
    try:
        registry.create_lease(NET, VX, DAY_S)
        registry.update_lease(NET, UDP, DAY_S)
        registry.delete_lease(NET)
        evs = w.events(3, WAIT_S)
    finally:
        w.close()
    assert [(e.kind, e.lease.subnet) for e in evs] == [(LeaseEvent.ADDED, NET), (LeaseEvent.ADDED, NET),
                                                       (LeaseEvent.REMOVED, NET)]
    assert evs[0].lease.attrs == _read_back(registry, VX) and evs[1].lease.attrs == UDP
    assert evs[2].lease.attrs is None                          # a delete carries only the key
    assert w.q.empty()


# -- dual-stack keys (docs/flannel-compat.md §"Keys", §"Dual-stack") --------------------------------

NET6 = ipaddress.IPv6Network("fc00:5:0:34::/64")
DS = LeaseAttrs(ipaddress.IPv4Address("192.168.64.3"), "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"},
                public_ipv6=ipaddress.IPv6Address("fd00:64::3"),
                backend_v6_data={"VNI": 1, "VtepMAC": "7a:11:9c:00:2e:01"})


def test_a_dual_stack_key_is_its_own_key(registry):
    """`10.5.34.0-24&fc00:5:0:34::-64` and `10.5.34.0-24` are two etcd keys; every call names
    both halves and every lease read back carries them."""
    made = registry.create_lease(NET, DS, DAY_S, NET6)
    assert (made.subnet, made.ipv6_subnet, made.attrs) == (NET, NET6, DS)
    with pytest.raises(SubnetExists):
        registry.create_lease(NET, DS, DAY_S, NET6)
    assert registry.get_lease(NET) is None                     # the IPv4-only key is another key
    registry.create_lease(NET, UDP, DAY_S)
    got = registry.get_lease(NET, NET6)
    assert got is not None and (got.ipv6_subnet, got.attrs) == (NET6, DS)
    leases, _ = registry.list_leases()
    assert sorted((lease.key, lease.attrs == DS) for lease in leases) == [
        ("10.5.34.0-24", False), ("10.5.34.0-24&fc00:5:0:34::-64", True)]
    renewed = registry.update_lease(NET, DS, DAY_S, NET6)
    assert renewed.ipv6_subnet == NET6
    registry.delete_lease(NET, NET6)
    assert registry.get_lease(NET, NET6) is None and registry.get_lease(NET) is not None


def test_created_orders_leases_by_creation_and_survives_a_renewal(registry):
    """`Lease.created` (v3 create_revision, v2 createdIndex) tells the lease policy which of two
    keys sharing a subnet came first: it grows with each create and a renewal keeps it."""
    a = registry.create_lease(NET, DS, DAY_S, NET6)
    b = registry.create_lease(NET, UDP, DAY_S)
    listed = {lease.key: lease.created for lease in registry.list_leases()[0]}
    assert 0 < a.created < b.created and listed == {a.key: a.created, b.key: b.created}
    registry.update_lease(NET, UDP, DAY_S, NET6)
    registry.update_lease(NET, DS, DAY_S)
    got = registry.get_lease(NET, NET6)
    assert got is not None and got.created == a.created and got.revision > b.created
    assert {lease.key: lease.created for lease in registry.list_leases()[0]} == listed


def test_watch_carries_the_ipv6_half(registry):
    _, rev = registry.list_leases()
    w = LeaseWatch(registry, rev)
    try:
        registry.create_lease(NET, DS, DAY_S, NET6)
        registry.delete_lease(NET, NET6)
        evs = w.events(2, WAIT_S)
    finally:
        w.close()
    assert [(e.kind, e.lease.subnet, e.lease.ipv6_subnet) for e in evs] == [
        (LeaseEvent.ADDED, NET, NET6), (LeaseEvent.REMOVED, NET, NET6)]
    assert evs[0].lease.attrs == DS and evs[1].lease.attrs is None


# -- IPv6-only keys (docs/flannel-compat.md §"IPv6-only") ------------------------------------------

V6ONLY = LeaseAttrs(ipaddress.IPv4Address(0), "vxlan", None, ipaddress.IPv6Address("fd00:64::3"),
                    {"VNI": 1, "VtepMAC": "7a:11:9c:00:2e:01"})
NO_SUBNET = ipaddress.IPv4Network("0.0.0.0/0")


def test_ipv6_only_keys_share_the_ipv4_half_and_are_distinct(registry):
    """Every IPv6-only lease is `0.0.0.0-0&<ipv6>-<len>`: two of them are two keys, listed,
    watched and deleted by their IPv6 half, with flannel's bytes in the value."""
    other6 = ipaddress.IPv6Network("fc00:5:0:35::/64")
    _, rev = registry.list_leases()
    w = LeaseWatch(registry, rev)
    try:
        registry.create_lease(NO_SUBNET, V6ONLY, DAY_S, NET6)
        registry.create_lease(NO_SUBNET, V6ONLY, DAY_S, other6)
        with pytest.raises(SubnetExists):
            registry.create_lease(NO_SUBNET, V6ONLY, DAY_S, NET6)
        leases, _ = registry.list_leases()
        assert sorted(lease.key for lease in leases) == ["0.0.0.0-0&fc00:5:0:34::-64", "0.0.0.0-0&fc00:5:0:35::-64"]
        assert all(lease.attrs == V6ONLY and lease.slot in (NET6, other6) for lease in leases)
        registry.delete_lease(NO_SUBNET, NET6)
        evs = w.events(3, WAIT_S)
    finally:
        w.close()
    assert [(e.kind, e.lease.slot) for e in evs] == [
        (LeaseEvent.ADDED, NET6), (LeaseEvent.ADDED, other6), (LeaseEvent.REMOVED, NET6)]
    assert registry.get_lease(NO_SUBNET, other6) is not None
