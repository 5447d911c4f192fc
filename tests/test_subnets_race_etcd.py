"""Two dual-stack hosts that race for one half of a `v4&v6` key, on a real etcd (v3, and the v2
store): the create-if-absent of each key succeeds for both, and the lease policy's check after
its create must leave one holder per subnet (agent/subnets.py, docs/flannel-compat.md
§"Dual-stack"). The interleaving is forced: the other host acquires between our listing and our
create."""
from __future__ import annotations

import dataclasses
import time
from ipaddress import IPv4Address as A
from ipaddress import IPv6Address as A6

import pytest

from fastflannel.agent.config import parse_config
from fastflannel.agent.registry import EtcdOptions, EtcdRegistry
from fastflannel.agent.registry_v2 import EtcdV2Registry
from fastflannel.agent.subnets import SubnetManager
from support.fakeregistry import attrs
from support.picks import Pick
from support.v2store import V2Etcd

pytestmark = pytest.mark.etcd

DUAL = ('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48",'
        '"Backend":{"Type":"host-gw"}}')


class RaceFirstCreate:
    """A registry that runs `race()` once, just before the first create goes to etcd."""

    def __init__(self, registry, race):
        self._r, self._race = registry, race

    def __getattr__(self, name):
        return getattr(self._r, name)

    def create_lease(self, *args, **kw):
        race, self._race = self._race, None
        if race is not None:
            race()
        return self._r.create_lease(*args, **kw)


@pytest.fixture(params=["v3", "v2"])
def store(request):
    server = None
    if request.param == "v3":
        make = lambda: EtcdRegistry(EtcdOptions(endpoints=[request.getfixturevalue("etcd_server")],  # noqa: E731
                                                timeout_s=3))
    else:
        request.getfixturevalue("etcd_required")
        server = V2Etcd()
        server.start()
        make = lambda: EtcdV2Registry(EtcdOptions(endpoints=[server.url], timeout_s=3))  # noqa: E731
    made = []

    def registry():
        r = make()
        r.connect()
        made.append(r)
        return r
    yield registry
    for r in made:
        r.close()
    if server is not None:
        server.remove()


def _host(ip, ip6):
    return dataclasses.replace(attrs(ip, "host-gw"), public_ipv6=A6(ip6))


@pytest.mark.parametrize("shared", ["ipv4", "ipv6"])
def test_the_later_of_two_keys_sharing_a_subnet_gives_its_key_up(store, shared):
    cfg = parse_config(DUAL)
    first = SubnetManager(store(), cfg, A("192.0.2.12"), rng=Pick(0, 1 if shared == "ipv4" else 0))
    theirs = []
    ours_reg = RaceFirstCreate(store(), lambda: theirs.append(first.acquire(_host("192.0.2.12", "fd00:2::12"))))
    ours = SubnetManager(ours_reg, cfg, A("192.0.2.10"), rng=Pick(0, 0 if shared == "ipv4" else 1)).acquire(
        _host("192.0.2.10", "fd00:2::10"))
    other = theirs[0]
    assert other.subnet != ours.subnet and other.ipv6_subnet != ours.ipv6_subnet
    leases, _ = store().list_leases()
    assert sorted(x.key for x in leases) == sorted([other.key, ours.key])
    held = {x.key: (x.public_ip, x.expiration) for x in leases}
    assert held[other.key][0] == A("192.0.2.12") and held[ours.key][0] == A("192.0.2.10")
    assert all(exp is not None and exp > time.time() for _, exp in held.values())
