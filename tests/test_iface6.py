"""The IPv6 half of the interface choice (agent/iface6.py, docs/flannel-compat.md §"Dual-stack"),
in a namespace with two uplinks, each with an IPv4 and a ULA IPv6 address (the namespace's own):
eth0 192.0.2.10/24 + fd00:2::10/64 (default routes via .1 / ::1), eth1 198.51.100.5/24 +
fd00:51::5/64, with a link-local address added first on eth1. Only routes are looked up; no packet
is sent."""
from __future__ import annotations

import ipaddress

import pytest

from fastflannel.agent import netlink
from fastflannel.agent.iface import InterfaceError, choose_external_interface

A = ipaddress.ip_address
pytestmark = pytest.mark.netns


@pytest.fixture
def ns(lab):
    name = lab.add_ns("if6")
    lab.sh(name, "ip link add eth0 type veth peer name p0 && ip link add eth1 type veth peer name p1 && "
                 "ip addr add 192.0.2.10/24 dev eth0 && ip -6 addr add fd00:2::10/64 dev eth0 nodad && "
                 "ip -6 addr add fe80::7/64 dev eth1 nodad && ip addr add 198.51.100.5/24 dev eth1 && "
                 "ip -6 addr add fd00:51::5/64 dev eth1 nodad && "
                 "for l in eth0 eth1 p0 p1; do ip link set $l up; done && ip route add default via 192.0.2.1 && "
                 "ip -6 route add default via fd00:2::1 dev eth0")
    netlink.set_netns(name)
    try:
        yield name
    finally:
        netlink.set_netns(None)


def pick(ifaces=(), regexes=(), public_ip=None, can_reach=None, public_ipv6=None):
    return choose_external_interface(list(ifaces), list(regexes), public_ip, can_reach, public_ipv6, ipv6=True)


def addrs(e):
    return (e.name, e.iface_addr, e.ext_addr, e.iface_v6_addr, e.ext_v6_addr)


def test_default_route_interface_gives_both_addresses(ns):
    assert addrs(pick()) == ("eth0", A("192.0.2.10"), A("192.0.2.10"), A("fd00:2::10"), A("fd00:2::10"))


def test_ipv4_only_choice_leaves_ipv6_empty(ns):
    e = choose_external_interface([], [], None, None)
    assert (e.iface_v6_addr, e.ext_v6_addr) == (None, None)


def test_ipv6_default_route_on_another_interface_is_refused(lab, ns):
    lab.sh(ns, "ip -6 route replace default via fd00:51::1 dev eth1")
    with pytest.raises(InterfaceError, match="v6 default route interface eth1 must be the same with v4 "
                                             "default route interface eth0"):
        pick()


def test_no_ipv6_default_route_is_refused(lab, ns):
    lab.sh(ns, "ip -6 route del default")
    with pytest.raises(InterfaceError, match="Unable to find default v6 route"):
        pick()


def test_public_ipv6_alone_selects_its_owner(ns):
    assert addrs(pick(public_ipv6="fd00:51::5")) == (
        "eth1", A("198.51.100.5"), A("198.51.100.5"), A("fd00:51::5"), A("fd00:51::5"))


def test_public_ips_on_two_interfaces_are_refused(ns):
    with pytest.raises(InterfaceError, match="v6 interface eth1 must be the same with v4 interface eth0"):
        pick(public_ip="192.0.2.10", public_ipv6="fd00:51::5")


def test_iface_by_name_prefers_a_global_ipv6_address(ns):
    e = pick(ifaces=["eth1"])
    assert (e.name, e.iface_v6_addr) == ("eth1", A("fd00:51::5"))      # not the earlier fe80::7


def test_iface_by_ipv4_address_takes_the_ipv6_address_of_its_interface(ns):
    assert addrs(pick(ifaces=["198.51.100.5"])) == (
        "eth1", A("198.51.100.5"), A("198.51.100.5"), A("fd00:51::5"), A("fd00:51::5"))


def test_iface_by_ipv6_address(ns):
    assert addrs(pick(ifaces=["fd00:51::5"])) == (
        "eth1", A("198.51.100.5"), A("198.51.100.5"), A("fd00:51::5"), A("fd00:51::5"))


def test_public_ipv6_behind_nat_is_announced_as_given(ns):
    e = pick(ifaces=["eth1"], public_ipv6="2001:db8::9")
    assert (e.iface_v6_addr, e.ext_v6_addr) == (A("fd00:51::5"), A("2001:db8::9"))


def test_regex_picks_the_matching_ipv6_address(lab, ns):
    lab.sh(ns, "ip -6 addr add fd00:52::5/64 dev eth1 nodad")
    e = pick(regexes=[r"^198\.51\.|^fd00:52:"])
    assert (e.name, e.iface_addr, e.iface_v6_addr) == ("eth1", A("198.51.100.5"), A("fd00:52::5"))


def test_can_reach_an_ipv6_destination(ns):
    e = pick(can_reach="fd00:51::99")
    assert (e.name, e.iface_addr, e.iface_v6_addr) == ("eth1", A("198.51.100.5"), A("fd00:51::5"))
    e = pick(can_reach="198.51.100.77")
    assert (e.name, e.iface_v6_addr) == ("eth1", A("fd00:51::5"))


def test_an_interface_without_ipv6_is_refused(lab, ns):
    lab.sh(ns, "ip -6 addr flush dev eth1")
    with pytest.raises(InterfaceError, match="Failed to find interface"):
        pick(ifaces=["eth1"])


@pytest.mark.parametrize("bad", ["1.2.3.4", "fd00::zz", "x"])
def test_bad_public_ipv6(bad):
    with pytest.raises(InterfaceError, match=f"invalid public IPv6 address: {bad}"):
        pick(public_ipv6=bad)


# -- IPv6-only networks (EnableIPv4 false): interfaces judged by their IPv6 addresses alone ----------

@pytest.fixture
def ns6only(lab):
    """eth0 with fd00:2::10/64 and no IPv4 address at all (the IPv6 default route leaves by
    it); eth1 with fd00:51::5/64 only; no IPv4 route anywhere."""
    name = lab.add_ns("if6o")
    lab.sh(name, "ip link add eth0 type veth peer name p0 && ip link add eth1 type veth peer name p1 && "
                 "ip -6 addr add fd00:2::10/64 dev eth0 nodad && ip -6 addr add fd00:51::5/64 dev eth1 nodad && "
                 "for l in eth0 eth1 p0 p1; do ip link set $l up; done && "
                 "ip -6 route add default via fd00:2::1 dev eth0")
    netlink.set_netns(name)
    try:
        yield name
    finally:
        netlink.set_netns(None)


def pick6only(ifaces=(), regexes=(), can_reach=None, public_ipv6=None):
    return choose_external_interface(list(ifaces), list(regexes), None, can_reach, public_ipv6,
                                     ipv6=True, ipv4=False)


@pytest.mark.parametrize("kw, name, addr6", [
    ({}, "eth0", "fd00:2::10"),                                  # the IPv6 default route's
    ({"ifaces": ["eth1"]}, "eth1", "fd00:51::5"),
    ({"ifaces": ["fd00:51::5"]}, "eth1", "fd00:51::5"),
    ({"regexes": ["^fd00:51:"]}, "eth1", "fd00:51::5"),
    ({"can_reach": "fd00:51::99"}, "eth1", "fd00:51::5"),
    ({"public_ipv6": "fd00:51::5"}, "eth1", "fd00:51::5"),
])
def test_ipv6_only_choice_needs_no_ipv4_address(ns6only, kw, name, addr6):
    e = pick6only(**kw)
    assert addrs(e) == (name, A("0.0.0.0"), A("0.0.0.0"), A(addr6), A(addr6))
    assert e.mtu > 0 and e.index > 0


def test_ipv6_only_choice_refuses_ipv4_specs(ns6only):
    with pytest.raises(InterfaceError, match="Failed to find interface"):
        pick6only(ifaces=["192.0.2.10"])


def test_dual_stack_choice_fails_without_ipv4_where_ipv6_only_succeeds(ns6only):
    with pytest.raises(InterfaceError):
        pick(ifaces=["eth0"])
    assert pick6only(ifaces=["eth0"]).name == "eth0"
