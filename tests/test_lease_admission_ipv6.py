"""Lease admission of the IPv6 half (agent/peers.py, docs/architecture.md §"Lease admission"):
with EnableIPv6 nothing outside IPv6Network is handed to the backends, and a dual-stack peer
needs a PublicIPv6 (and, on vxlan, a VtepMAC in BackendV6Data); a v4-only host takes a
dual-stack peer's lease for its IPv4 half, as flannel does (a mixed cluster)."""
from __future__ import annotations

import dataclasses
import logging
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest

from fastflannel.agent.config import parse_config
from fastflannel.agent.lease import Lease, LeaseEvent
from fastflannel.agent.peers import CODES, PeerTracker
from support.fakeregistry import attrs

DUAL = parse_config('{"Network":"10.0.0.0/8","SubnetLen":20,"EnableIPv6":true,"IPv6Network":"fc00:10::/48",'
                    '"Backend":{"Type":"vxlan","VNI":100}}')
V4 = parse_config('{"Network":"10.0.0.0/8","SubnetLen":20,"Backend":{"Type":"vxlan","VNI":100}}')
OWN = N("10.10.0.0/20")
ADDED = LeaseEvent.ADDED


def dual(net, ip, net6, ip6="fd00:2::11", mac6="0a:00:00:00:66:11", **over):
    a = attrs(ip, "vxlan", {"VNI": 100, "VtepMAC": f"0a:00:00:00:00:{int(ip.rsplit('.', 1)[1]):02x}"})
    a = dataclasses.replace(a, public_ipv6=A6(ip6) if ip6 else None,
                            backend_v6_data={"VNI": 100, "VtepMAC": mac6} if mac6 else None, **over)
    return Lease(N(net), a, 1000.0, ipv6_subnet=N6(net6) if net6 else None)


def tracker(cfg=DUAL):
    return PeerTracker(OWN, attrs("192.0.2.10", "vxlan", {"VNI": 100, "VtepMAC": "0a:00:00:00:00:10"}), cfg)


def add(t, *leases):
    return t.apply([LeaseEvent(ADDED, x) for x in leases])


GOOD = dual("10.10.16.0/20", "192.0.2.11", "fc00:10:0:1::/64")


@pytest.mark.parametrize("bad,code,words", [
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:99:0:1::/64"), "outside-network", "outside the IPv6Network"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10::/48"), "outside-network", "is the whole IPv6Network"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00::/16"), "outside-network", "covers the whole IPv6Network"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10:0:1::/80"), "prefix-length", "/80 is not the network's"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10:0:2::/64", ip6=None), "public-ip", "without a PublicIPv6"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10:0:2::/64", ip6="::1"), "public-ip", "loopback"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10:0:2::/64", ip6="ff02::1"), "public-ip", "multicast"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10:0:2::/64", ip6="::"), "public-ip", "unspecified"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10:0:2::/64", ip6="fc00:10:0:5::1"), "public-ip",
     "inside the overlay network"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10:0:2::/64", mac6=None), "vtep-mac", "BackendV6Data"),
    (dual("10.10.48.0/20", "192.0.2.77", "fc00:10:0:2::/64", mac6="01:00:5e:00:00:01"), "vtep-mac",
     "BackendV6Data"),
])
def test_a_bad_ipv6_half_keeps_the_lease_from_the_backends(bad, code, words, caplog):
    t = tracker()
    t.reset([GOOD])
    with caplog.at_level(logging.WARNING, logger="fastflannel.peers"):
        assert add(t, bad) == []
    assert [x.key for x in t.leases()] == [GOOD.key]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and bad.key in warnings[0] and words in warnings[0], warnings
    assert t.rejected() == {bad.key: warnings[0].split(": ", 1)[1]}
    assert t.rejection_counts() == dict(dict.fromkeys(CODES, 0), **{code: 1})


def test_dual_stack_peers_are_admitted_with_both_halves():
    t = tracker()
    evs = add(t, GOOD)
    assert [(e.kind, e.lease.key) for e in evs] == [(ADDED, "10.10.16.0-20&fc00:10:0:1::-64")]
    assert evs[0].lease.ipv6_subnet == N6("fc00:10:0:1::/64")


def test_ipv4_only_peers_are_admitted_by_a_dual_stack_host():
    """flannel programs the IPv4 half only for a lease without an IPv6 subnet."""
    t = tracker()
    v4peer = Lease(N("10.10.32.0/20"), attrs("192.0.2.12", "vxlan", {"VNI": 100, "VtepMAC": "0a:00:00:00:00:12"}),
                   1000.0)
    assert [e.lease.key for e in add(t, v4peer)] == ["10.10.32.0-20"]


def test_an_ipv4_only_host_ignores_the_ipv6_half():
    """A v4-only host admits a dual-stack peer for its IPv4 half, whatever its IPv6 half says."""
    t = tracker(V4)
    odd = dual("10.10.32.0/20", "192.0.2.12", "fc00:99:0:1::/64", ip6=None, mac6=None)
    assert [e.lease.key for e in add(t, GOOD, odd)] == [GOOD.key, odd.key]


REMOVED = LeaseEvent.REMOVED


def created(lease, n):
    return dataclasses.replace(lease, created=n)


def test_two_keys_of_one_ipv4_subnet_are_one_peer_the_earlier_created():
    """`v4&v6` keys are unique only as pairs (docs/flannel-compat.md §"Dual-stack"): a host that
    lost the race for 10.10.16.0/20 creates, then deletes, a second key of it. The earlier key
    stays the peer throughout; the later one's DELETE takes nothing away."""
    t = tracker()
    first = created(GOOD, 5)
    later = created(dual("10.10.16.0/20", "192.0.2.12", "fc00:10:0:2::/64", ip6="fd00:2::12"), 7)
    assert add(t, first) == [LeaseEvent(ADDED, first)]
    assert add(t, later) == []                                   # the earlier keeps the subnet
    assert t.apply([LeaseEvent(REMOVED, Lease(later.subnet, None, ipv6_subnet=later.ipv6_subnet))]) == []
    assert [x.key for x in t.leases()] == [first.key]
    t.reset([later, first])                                      # a listing seeing both: the same
    assert [x.key for x in t.leases()] == [first.key]
    assert t.apply([LeaseEvent(REMOVED, Lease(first.subnet, None, ipv6_subnet=first.ipv6_subnet))]) == [
        LeaseEvent(REMOVED, first), LeaseEvent(ADDED, later)]    # the first gone: the other is the peer


def test_an_ipv6_subnet_leased_twice_is_programmed_for_the_earlier_key_only():
    t = tracker()
    first = created(GOOD, 5)
    later = created(dual("10.10.32.0/20", "192.0.2.12", "fc00:10:0:1::/64", ip6="fd00:2::12",
                         mac6="0a:00:00:00:66:12"), 7)
    add(t, first)
    assert add(t, later) == []
    assert t.rejected() == {later.key: f"IPv6 subnet fc00:10:0:1::/64 is also leased by {first.key} "
                                       f"(192.0.2.11), created first"}
    assert t.rejection_counts()["subnet-conflict"] == 1
    assert t.apply([LeaseEvent(REMOVED, Lease(later.subnet, None, ipv6_subnet=later.ipv6_subnet))]) == []
    assert [x.key for x in t.leases()] == [first.key] and t.rejected() == {}
    add(t, later)                                               # back, and then the first goes
    assert t.apply([LeaseEvent(REMOVED, Lease(first.subnet, None, ipv6_subnet=first.ipv6_subnet))]) == [
        LeaseEvent(REMOVED, first), LeaseEvent(ADDED, later)]


def test_a_peer_with_our_own_ipv6_subnet_is_refused():
    own6 = N6("fc00:10:0:9::/64")
    t = PeerTracker(OWN, attrs("192.0.2.10", "vxlan", {"VNI": 100, "VtepMAC": "0a:00:00:00:00:10"}), DUAL, own6)
    assert add(t, dual("10.10.32.0/20", "192.0.2.12", str(own6), ip6="fd00:2::12")) == []
    assert list(t.rejected().values()) == ["IPv6 subnet fc00:10:0:9::/64 is this host's"]


def test_an_ipv4_only_host_ignores_a_shared_ipv6_half():
    t = tracker(V4)
    first = created(GOOD, 5)
    later = created(dual("10.10.32.0/20", "192.0.2.12", "fc00:10:0:1::/64", ip6="fd00:2::12"), 7)
    add(t, first, later)
    assert [x.key for x in t.leases()] == [first.key, later.key] and t.rejected() == {}
