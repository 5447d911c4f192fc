"""The Registry contract (agent/registry_api.py) as one sequence, run against the etcd v3 registry
on a real etcd, the etcd v2 registry on a real etcd with --enable-v2, and the in-memory fake the
lease-policy tests use: the fake may only be trusted where it behaves as etcd does."""
from __future__ import annotations

import ipaddress
import queue
import threading
import time

import pytest

from fastflannel.agent.errors import SubnetExists
from fastflannel.agent.lease import LeaseAttrs, LeaseEvent, decode_attrs, encode_attrs_v2
from fastflannel.agent.registry import EtcdOptions, EtcdRegistry
from fastflannel.agent.registry_api import Registry
from fastflannel.agent.registry_v2 import EtcdV2Registry
from support.fakeregistry import FakeRegistry
from support.v2store import V2Etcd

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


class Watch:
    """watch_leases drained by a thread; events(n) waits for n events."""

    def __init__(self, reg: Registry, revision: int):
        self.stop = threading.Event()
        self.q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(reg, revision), daemon=True)
        self.thread.start()

    def _run(self, reg: Registry, revision: int) -> None:
        for batch in reg.watch_leases(revision, self.stop):
            for ev in batch.events:
                self.q.put(ev)

    def events(self, n: int) -> list[LeaseEvent]:
        return [self.q.get(timeout=WAIT_S) for _ in range(n)]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "watch_leases did not end after stop"


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
    w = Watch(registry, rev)
    try:
        registry.create_lease(NET, VX, DAY_S)
        registry.update_lease(NET, UDP, DAY_S)
        registry.delete_lease(NET)
        evs = w.events(3)
    finally:
        w.close()
    assert [(e.kind, e.lease.subnet) for e in evs] == [(LeaseEvent.ADDED, NET), (LeaseEvent.ADDED, NET),
                                                       (LeaseEvent.REMOVED, NET)]
    assert evs[0].lease.attrs == _read_back(registry, VX) and evs[1].lease.attrs == UDP
    assert evs[2].lease.attrs is None                          # a delete carries only the key
    assert w.q.empty()
