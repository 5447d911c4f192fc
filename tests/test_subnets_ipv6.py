"""Dual-stack lease policy against the in-memory registry: both subnets taken together, reuse
by PublicIP only when both halves fit, the previous pair from subnet.env, renewal and re-creation
under the one key (docs/flannel-compat.md §"Dual-stack", flannel's subnet/etcd/local_manager.go)."""
from __future__ import annotations

import dataclasses
import math
import random
import threading
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest

from fastflannel.agent.config import parse_config
from fastflannel.agent.errors import LeaseLost, OutOfSubnets
from fastflannel.agent.subnets import SUBNET_TTL_S, LeaseKeeper, SubnetManager
from support.fakeregistry import FakeRegistry, attrs
from support.picks import Pick

ME, ME6 = "192.0.2.10", "fd00:2::10"
OTHER = "192.0.2.12"
MY_ATTRS = dataclasses.replace(attrs(ME, "host-gw"), public_ipv6=A6(ME6))
DUAL = '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"host-gw"}}'
V4 = '{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}'


class PickFirst:
    def __init__(self):
        self.windows = []

    def choice(self, seq):
        self.windows.append(list(seq))
        return seq[0]


def manager(reg, network=DUAL, prev=None, prev6=None, rng=None):
    return SubnetManager(reg, parse_config(network), A(ME), prev, rng=rng or random.Random(1),
                         clock=reg.clock, prev_ipv6_subnet=prev6)


def test_fresh_dual_stack_lease_takes_both_subnets_under_one_key():
    reg = FakeRegistry()
    lease = manager(reg).acquire(MY_ATTRS)
    assert lease.subnet.prefixlen == 24 and lease.subnet.subnet_of(N("10.5.0.0/16"))
    assert lease.ipv6_subnet is not None and lease.ipv6_subnet.prefixlen == 64
    assert lease.ipv6_subnet.subnet_of(N6("fc00:5::/48")) and lease.ipv6_subnet != N6("fc00:5::/64")
    assert reg.keys() == [(lease.subnet, lease.ipv6_subnet)]
    assert lease.key == f"{lease.subnet.network_address}-24&{lease.ipv6_subnet.network_address}-64"
    assert lease.expiration == reg.clock() + SUBNET_TTL_S


def test_ipv6_window_skips_taken_ipv6_subnets_and_ignores_ipv4_only_leases():
    reg = FakeRegistry()
    reg.put("10.5.1.0/24", OTHER, ipv6_subnet="fc00:5:0:1::/64", public_ipv6="fd00:2::12")
    reg.put("10.5.2.0/24", "192.0.2.13")                       # IPv4-only: blocks no IPv6 subnet
    reg.put("10.5.3.0/24", "192.0.2.14", ipv6_subnet="fc00:5:0:3::/64")
    rng = PickFirst()
    lease = manager(reg, rng=rng).acquire(MY_ATTRS)
    v4_window, v6_window = rng.windows
    assert v4_window[0] == N("10.5.4.0/24") and len(v4_window) == 100
    assert v6_window[:3] == [N6("fc00:5:0:2::/64"), N6("fc00:5:0:4::/64"), N6("fc00:5:0:5::/64")]
    assert len(v6_window) == 100
    assert (lease.subnet, lease.ipv6_subnet) == (N("10.5.4.0/24"), N6("fc00:5:0:2::/64"))


def test_out_of_ipv6_subnets():
    reg = FakeRegistry()
    net = ('{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/62",'
           '"IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}')
    for i in (1, 2, 3):
        reg.put(f"10.5.{i}.0/24", f"192.0.2.{20 + i}", ipv6_subnet=f"fc00:5:0:{i}::/64")
    with pytest.raises(OutOfSubnets, match="IPv6"):
        manager(reg, net).acquire(MY_ATTRS)


def test_own_dual_stack_lease_is_reused_by_public_ip():
    reg = FakeRegistry()
    reg.put("10.5.7.0/24", ME, ipv6_subnet="fc00:5:0:7::/64", public_ipv6=ME6)
    lease = manager(reg).acquire(MY_ATTRS)
    assert (lease.subnet, lease.ipv6_subnet) == (N("10.5.7.0/24"), N6("fc00:5:0:7::/64"))
    assert reg.names() == ["list_leases", "update_lease"]
    assert reg.keys() == [(N("10.5.7.0/24"), N6("fc00:5:0:7::/64"))]


def test_own_ipv4_only_lease_is_replaced_under_a_dual_stack_config():
    """flannel's isIPv6SubnetConfigCompat: EnableIPv6 wants an IPv6 subnet in the lease."""
    reg = FakeRegistry()
    reg.put("10.5.7.0/24", ME)
    lease = manager(reg, prev=N("10.5.7.0/24")).acquire(MY_ATTRS)
    assert "delete_lease" in reg.names()
    assert lease.ipv6_subnet is not None
    # subnet.env has no IPv6 subnet: the previous pair does not fit, both are new
    assert reg.keys() == [(lease.subnet, lease.ipv6_subnet)]


def test_own_dual_stack_lease_is_replaced_under_an_ipv4_only_config():
    reg = FakeRegistry()
    reg.put("10.5.7.0/24", ME, ipv6_subnet="fc00:5:0:7::/64")
    lease = manager(reg, V4, prev=N("10.5.7.0/24"), prev6=N6("fc00:5:0:7::/64")).acquire(attrs(ME, "host-gw"))
    assert "delete_lease" in reg.names()
    assert (lease.subnet, lease.ipv6_subnet) == (N("10.5.7.0/24"), None)    # the previous IPv4 subnet
    assert reg.keys() == [(N("10.5.7.0/24"), None)]


def test_previous_pair_from_subnet_env_is_reused():
    reg = FakeRegistry()
    lease = manager(reg, prev=N("10.5.9.0/24"), prev6=N6("fc00:5:0:9::/64")).acquire(MY_ATTRS)
    assert (lease.subnet, lease.ipv6_subnet) == (N("10.5.9.0/24"), N6("fc00:5:0:9::/64"))


@pytest.mark.parametrize("prev6", [None, N6("fc00:6:0:9::/64"), N6("fc00:5:0:9::/80")])
def test_previous_pair_is_dropped_when_its_ipv6_half_does_not_fit(prev6):
    reg = FakeRegistry()
    lease = manager(reg, prev=N("10.5.9.0/24"), prev6=prev6, rng=PickFirst()).acquire(MY_ATTRS)
    assert lease.subnet == N("10.5.1.0/24") and lease.ipv6_subnet == N6("fc00:5:0:1::/64")


def test_previous_pair_is_dropped_when_another_host_holds_its_ipv6_subnet():
    reg = FakeRegistry()
    reg.put("10.5.1.0/24", OTHER, ipv6_subnet="fc00:5:0:9::/64")
    lease = manager(reg, prev=N("10.5.9.0/24"), prev6=N6("fc00:5:0:9::/64"), rng=PickFirst()).acquire(MY_ATTRS)
    assert lease.ipv6_subnet != N6("fc00:5:0:9::/64") and lease.subnet == N("10.5.2.0/24")


def test_ipv4_only_config_takes_no_ipv6_subnet():
    reg = FakeRegistry()
    lease = manager(reg, V4).acquire(attrs(ME, "host-gw"))
    assert lease.ipv6_subnet is None and reg.keys() == [(lease.subnet, None)]


def _keeper(reg, lease, max_waits, hooks):
    waits = []
    stop = threading.Event()

    def wait(timeout):
        i = len(waits)
        waits.append(timeout)
        if i in hooks:
            hooks[i]()
        if timeout == math.inf or len(waits) >= max_waits:
            stop.set()
            return
        reg.clock.advance(timeout)
    mgr = manager(reg)
    keeper = LeaseKeeper(mgr, lease, wait=wait)
    keeper.run(stop)
    return keeper


def test_keeper_renews_and_recreates_under_the_dual_stack_key():
    """A renewal re-puts the dual-stack key; a key deleted meanwhile is found missing at the next
    renewal and re-created with both halves."""
    reg = FakeRegistry()
    lease = manager(reg).acquire(MY_ATTRS)
    key = (lease.subnet, lease.ipv6_subnet)
    reg.calls.clear()
    keeper = _keeper(reg, lease, 3, {1: lambda: reg.delete_lease(*key)})
    assert reg.names() == ["get_lease", "update_lease", "delete_lease", "get_lease", "create_lease",
                           "list_leases"]          # the look for an earlier key sharing a half
    assert reg.keys() == [key]
    assert keeper.lease.ipv6_subnet == lease.ipv6_subnet
    assert reg.get_lease(*key).attrs == MY_ATTRS


@pytest.mark.parametrize("shared", ["ipv4", "ipv6"])
def test_two_hosts_racing_for_one_half_of_a_key_leave_one_holder_per_subnet(shared):
    """etcd's create-if-absent compares the whole key `v4&v6`: two hosts that picked one IPv4
    subnet with different IPv6 ones (or the reverse) both create theirs, and flannel stops
    there, so both route one subnet. The later-created one must give its key up and pick again."""
    reg = FakeRegistry()
    first = SubnetManager(reg, parse_config(DUAL), A(OTHER), rng=Pick(0, 1 if shared == "ipv4" else 0),
                          clock=reg.clock)
    theirs = []

    def race(method, _arg):
        if method == "create_lease":           # the other host creates between our list and create
            reg.before = None
            theirs.append(first.acquire(dataclasses.replace(attrs(OTHER, "host-gw"),
                                                            public_ipv6=A6("fd00:2::12"))))
    reg.before = race
    ours = manager(reg, rng=Pick(0, 0 if shared == "ipv4" else 1)).acquire(MY_ATTRS)
    other = theirs[0]
    assert other.subnet != ours.subnet and other.ipv6_subnet != ours.ipv6_subnet
    assert set(reg.keys()) == {(other.subnet, other.ipv6_subnet), (ours.subnet, ours.ipv6_subnet)}
    assert reg.names().count("delete_lease") == 1                     # ours, the later one
    held = reg.get_lease(other.subnet, other.ipv6_subnet)
    assert held is not None and held.public_ip == A(OTHER)


def test_an_earlier_ipv4_only_lease_on_our_ipv4_subnet_makes_us_pick_again():
    """A v4-only host (key `10.5.1.0-24`) that created its lease after our list and before our
    create holds the IPv4 subnet first; our dual-stack key beside it is given up."""
    reg = FakeRegistry()
    raced = []

    def race(method, _arg):
        if method == "create_lease" and not raced:
            raced.append(reg.put("10.5.1.0/24", OTHER))
    reg.before = race
    lease = manager(reg, rng=PickFirst()).acquire(MY_ATTRS)
    assert raced and lease.subnet == N("10.5.2.0/24")
    assert reg.keys() == [(N("10.5.1.0/24"), None), (lease.subnet, lease.ipv6_subnet)]


def test_keeper_does_not_recreate_a_key_whose_ipv4_half_another_host_took_meanwhile():
    """Our key expired (a partition) and another host took our IPv4 subnet with another IPv6 one:
    the keeper's create-if-absent of our own key succeeds, so it must look for an earlier key
    sharing a half, give its key up and stop with LeaseLost rather than route a subnet twice."""
    reg = FakeRegistry()
    lease = manager(reg).acquire(MY_ATTRS)
    key = (lease.subnet, lease.ipv6_subnet)

    def taken():
        reg.delete_lease(*key)
        reg.put(lease.subnet, OTHER, ipv6_subnet="fc00:5:0:77::/64", public_ipv6="fd00:2::12")
    with pytest.raises(LeaseLost, match=f"held by {OTHER}"):
        _keeper(reg, lease, 3, {1: taken})
    assert reg.keys() == [(lease.subnet, N6("fc00:5:0:77::/64"))]
