"""IPv6-only lease policy (EnableIPv4 false) against the in-memory registry: only the IPv6 subnet
is allocated, under the placeholder 0.0.0.0/0; a host's lease is found by its PublicIPv6 and
its previous FLANNEL_IPV6_SUBNET, never by PublicIP 0.0.0.0, which every IPv6-only lease carries
(docs/flannel-compat.md §"IPv6-only"); the keeper tells hosts apart by PublicIPv6 too."""
from __future__ import annotations

import dataclasses
import random
import threading
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest

from fastflannel.agent.config import parse_config
from fastflannel.agent.errors import LeaseLost, SubnetExists
from fastflannel.agent.lease import NO_SUBNET, LeaseAttrs, LeaseEvent
from fastflannel.agent.subnets import LeaseKeeper, SubnetManager
from support.fakeregistry import FakeRegistry

ME6, OTHER6, THIRD6 = "fd00:2::10", "fd00:2::12", "fd00:2::13"
V6ONLY = ('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48",'
          '"IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}')


def attrs6(pub6: str) -> LeaseAttrs:
    return LeaseAttrs(A(0), "host-gw", None, A6(pub6))


def manager(reg, pub6=ME6, prev6=None, rng=None):
    return SubnetManager(reg, parse_config(V6ONLY), A(0), None, rng=rng or random.Random(1),
                         clock=reg.clock, prev_ipv6_subnet=prev6, public_ipv6=A6(pub6))


def seed(reg, sn6: str, pub6: str):
    return reg.put(NO_SUBNET, "0.0.0.0", btype="host-gw", ipv6_subnet=sn6, public_ipv6=pub6)


def test_fresh_lease_is_the_ipv6_subnet_under_the_placeholder():
    reg = FakeRegistry()
    lease = manager(reg).acquire(attrs6(ME6))
    assert lease.subnet == N("0.0.0.0/0") and lease.ipv6_subnet is not None
    assert lease.ipv6_subnet.prefixlen == 64 and lease.ipv6_subnet.subnet_of(N6("fc00:5::/48"))
    assert lease.key == f"0.0.0.0-0&{lease.ipv6_subnet.network_address}-64"
    assert lease.slot == lease.ipv6_subnet


def test_three_hosts_get_three_leases_none_reuses_another():
    """flannel's fault not copied: the second IPv6-only host would "reuse" the first one's lease
    because both carry PublicIP 0.0.0.0."""
    reg = FakeRegistry()
    leases = [manager(reg, pub6).acquire(attrs6(pub6)) for pub6 in (ME6, OTHER6, THIRD6)]
    assert len({lease.ipv6_subnet for lease in leases}) == 3
    assert [str(reg.get_lease(lease.subnet, lease.ipv6_subnet).public_ipv6) for lease in leases] == \
        [ME6, OTHER6, THIRD6]


def test_own_lease_is_reused_by_public_ipv6():
    reg = FakeRegistry()
    seed(reg, "fc00:5:0:1::/64", OTHER6)
    seed(reg, "fc00:5:0:9::/64", ME6)
    lease = manager(reg).acquire(attrs6(ME6))
    assert lease.ipv6_subnet == N6("fc00:5:0:9::/64")
    assert len(reg.keys()) == 2


def test_previous_ipv6_subnet_is_reused_when_free_and_refused_when_held():
    reg = FakeRegistry()
    lease = manager(reg, prev6=N6("fc00:5:0:42::/64")).acquire(attrs6(ME6))
    assert lease.ipv6_subnet == N6("fc00:5:0:42::/64")
    reg2 = FakeRegistry()
    seed(reg2, "fc00:5:0:42::/64", OTHER6)
    lease = manager(reg2, prev6=N6("fc00:5:0:42::/64")).acquire(attrs6(ME6))
    assert lease.ipv6_subnet != N6("fc00:5:0:42::/64")


@pytest.mark.parametrize("prev6", ["fc00:6::/64", "fc00:5:0:42::/80"])
def test_previous_ipv6_subnet_that_does_not_fit_is_ignored(prev6):
    lease = manager(FakeRegistry(), prev6=N6(prev6)).acquire(attrs6(ME6))
    assert lease.ipv6_subnet != N6(prev6) and lease.ipv6_subnet.prefixlen == 64


def test_placeholder_leases_do_not_block_each_other_or_a_dual_stack_v4_window():
    """Every IPv6-only lease has the IPv4 half 0.0.0.0/0: that is no IPv4 overlap."""
    reg = FakeRegistry()
    for i in range(1, 5):
        seed(reg, f"fc00:5:0:{i}::/64", f"fd00:2::{i + 20}")
    lease = manager(reg).acquire(attrs6(ME6))
    assert lease.ipv6_subnet not in {N6(f"fc00:5:0:{i}::/64") for i in range(1, 5)}
    dual = SubnetManager(reg, parse_config('{"Network":"10.5.0.0/16","EnableIPv6":true,'
                                           '"IPv6Network":"fc00:5::/48","Backend":{"Type":"host-gw"}}'),
                         A("192.0.2.10"), None, rng=random.Random(1), clock=reg.clock)
    d = dual.acquire(dataclasses.replace(attrs6(ME6), public_ip=A("192.0.2.10")))
    assert d.subnet.subnet_of(N("10.5.0.0/16")) and d.subnet.prefixlen == 24


def test_a_lost_race_moves_to_another_ipv6_subnet():
    class PickFirst:
        def choice(self, seq):
            return seq[0]
    reg = FakeRegistry()
    raced = []

    def race(method, _arg):
        if method == "create_lease" and not raced:        # another host creates it first
            raced.append(seed(reg, "fc00:5:0:1::/64", OTHER6))
    reg.before = race
    lease = manager(reg, rng=PickFirst()).acquire(attrs6(ME6))
    assert raced and lease.ipv6_subnet == N6("fc00:5:0:2::/64")
    assert len(reg.keys()) == 2


def test_keeper_takes_its_own_renewal_and_refuses_another_hosts_lease_on_its_key():
    reg = FakeRegistry()
    mgr = manager(reg)
    lease = mgr.acquire(attrs6(ME6))
    keeper = LeaseKeeper(mgr, lease, wait=lambda t: None)
    other = dataclasses.replace(lease, attrs=attrs6(OTHER6))
    assert mgr.holds(lease) and not mgr.holds(other)
    reg.delete_lease(lease.subnet, lease.ipv6_subnet)
    seed(reg, str(lease.ipv6_subnet), OTHER6)          # another host took our IPv6 subnet
    keeper.on_event(LeaseEvent(LeaseEvent.ADDED, other))
    stop = threading.Event()
    with pytest.raises(LeaseLost, match=OTHER6):
        keeper.run(stop)


def test_keeper_ignores_events_of_other_ipv6_only_leases():
    """All IPv6-only leases share the IPv4 half: only the IPv6 subnet says which is ours."""
    reg = FakeRegistry()
    mgr = manager(reg)
    lease = mgr.acquire(attrs6(ME6))
    peer = seed(reg, "fc00:5:0:77::/64", OTHER6)
    keeper = LeaseKeeper(mgr, lease, wait=lambda t: None)
    keeper.on_event(LeaseEvent(LeaseEvent.REMOVED, dataclasses.replace(peer, attrs=None)))
    keeper.on_event(LeaseEvent(LeaseEvent.ADDED, peer))
    assert not keeper._removed and not keeper._verify


def test_create_of_an_existing_ipv6_only_key_is_refused():
    reg = FakeRegistry()
    seed(reg, "fc00:5:0:5::/64", OTHER6)
    with pytest.raises(SubnetExists):
        reg.create_lease(NO_SUBNET, attrs6(ME6), 60, N6("fc00:5:0:5::/64"))
