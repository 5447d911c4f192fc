"""choose_external_interface (docs/flannel-compat.md §"Interface choice") in a namespace with two uplinks:
eth0 192.0.2.10/24 (default route via 192.0.2.1) and eth1 198.51.100.5/24 + 198.51.100.6/24,
with a link-local address added first on eth1 so the address sort is exercised."""
from __future__ import annotations

import ipaddress

import pytest

from fastflannel.agent import iface, netlink
from fastflannel.agent.iface import InterfaceError, choose_external_interface

A = ipaddress.ip_address


@pytest.fixture
def ns(lab):
    name = lab.add_ns("if")
    lab.sh(name, "ip link add eth0 mtu 1450 type veth peer name p0 && ip link add eth1 type veth peer name p1 && "
                 "ip addr add 192.0.2.10/24 dev eth0 && "
                 "ip addr add 169.254.7.7/16 dev eth1 && ip addr add 198.51.100.5/24 dev eth1 && "
                 "ip addr add 198.51.100.6/24 dev eth1 && "
                 "for l in eth0 eth1 p0 p1; do ip link set $l up; done && ip route add default via 192.0.2.1")
    netlink.set_netns(name)
    try:
        yield name
    finally:
        netlink.set_netns(None)


def pick(ifaces=(), regexes=(), public_ip=None, can_reach=None):
    return choose_external_interface(list(ifaces), list(regexes), public_ip, can_reach)


@pytest.mark.netns
def test_default_route_interface(ns):
    e = pick()
    assert (e.name, e.mtu, e.iface_addr, e.ext_addr) == ("eth0", 1450, A("192.0.2.10"), A("192.0.2.10"))
    assert e.index == netlink.link_index("eth0")


@pytest.mark.netns
def test_public_ip_alone_selects_its_owner(ns):
    e = pick(public_ip="198.51.100.6")
    assert (e.name, e.iface_addr, e.ext_addr) == ("eth1", A("198.51.100.6"), A("198.51.100.6"))
    with pytest.raises(InterfaceError, match="203.0.113.9"):
        pick(public_ip="203.0.113.9")          # not local: NAT setups must pass -iface too


@pytest.mark.netns
def test_iface_by_name_prefers_global_permanent_address(ns):
    e = pick(ifaces=["eth1"])
    assert (e.name, e.iface_addr) == ("eth1", A("198.51.100.5"))  # not the earlier link-local one


@pytest.mark.netns
def test_iface_by_ip_and_public_ip_override(ns):
    e = pick(ifaces=["198.51.100.6"], public_ip="203.0.113.9")
    assert (e.name, e.iface_addr, e.ext_addr) == ("eth1", A("198.51.100.6"), A("203.0.113.9"))


@pytest.mark.netns
def test_first_usable_iface_wins(ns):
    assert pick(ifaces=["nope0", "10.9.9.9", "eth1", "eth0"]).name == "eth1"


@pytest.mark.netns
def test_regex_matches_addresses_before_names(ns):
    e = pick(regexes=[r"^198\.51\.100\.6$"])
    assert (e.name, e.iface_addr) == ("eth1", A("198.51.100.6"))
    e = pick(regexes=[r"eth1"])               # no address matches: names are tried
    assert (e.name, e.iface_addr) == ("eth1", A("198.51.100.5"))
    e = pick(regexes=[r"th0"])                # unanchored search, like Go's MatchString
    assert e.name == "eth0"
    e = pick(regexes=[r"\.10$", r"eth1"])     # the first regex that matches wins
    assert (e.name, e.iface_addr) == ("eth0", A("192.0.2.10"))
    e = pick(regexes=["(", "eth1"])           # a bad regex is skipped
    assert e.name == "eth1"
    e = pick(ifaces=["nope0"], regexes=["eth1"])
    assert e.name == "eth1"


@pytest.mark.netns
def test_can_reach(ns):
    e = pick(can_reach="198.51.100.77")
    assert (e.name, e.iface_addr) == ("eth1", A("198.51.100.5"))
    e = pick(can_reach="8.8.8.8")            # via the default route; no packet is sent
    assert (e.name, e.iface_addr) == ("eth0", A("192.0.2.10"))


@pytest.mark.netns
def test_nothing_matches(ns):
    with pytest.raises(InterfaceError) as ei:
        pick(ifaces=["nope0"], regexes=["^zzz"])
    assert str(ei.value) == "Failed to find interface to use that matches the interfaces and/or regexes provided"


@pytest.mark.netns
def test_deprecated_and_loopback_addresses_skipped(lab, ns):
    lab.sh(ns, "ip addr add 192.0.2.20/24 dev eth0 preferred_lft 0")       # deprecated
    lab.sh(ns, "ip addr del 192.0.2.10/24 dev eth0")
    lab.sh(ns, "ip addr add 192.0.2.30/24 dev eth0 && ip route replace default via 192.0.2.1")
    assert pick().iface_addr == A("192.0.2.30")
    with pytest.raises(InterfaceError, match="Failed to find interface"):
        pick(ifaces=["lo"])                    # only 127.0.0.1: no candidate address


@pytest.mark.netns
def test_no_default_route(lab, ns):
    lab.sh(ns, "ip route del default")
    with pytest.raises(InterfaceError, match="default"):
        pick()


def test_address_sort_order():
    def mk(ip, flags):
        return netlink.Address(ipaddress.ip_interface(ip), flags, 0)
    P, T, D = netlink.IFA_F_PERMANENT, netlink.IFA_F_SECONDARY, netlink.IFA_F_DEPRECATED
    addrs = [mk("169.254.1.1/16", P), mk("10.0.0.3/8", T | P), mk("10.0.0.2/8", 0), mk("10.0.0.1/8", P),
             mk("10.0.0.9/8", P | D), mk("127.0.0.1/8", P)]
    got = [str(a.ip) for a in sorted(filter(iface._candidate, addrs), key=iface._sort_key)]
    assert got == ["10.0.0.1", "10.0.0.3", "10.0.0.2", "169.254.1.1"]


def test_mtu_zero_is_an_error(monkeypatch):
    monkeypatch.setattr(netlink, "link_info", lambda name: {"index": 5, "mtu": 0})
    with pytest.raises(InterfaceError, match="MTU"):
        iface._result("tun9", A("10.0.0.1"), None)


def test_bad_public_ip():
    with pytest.raises(InterfaceError, match="invalid public IP"):
        pick(public_ip="not-an-ip")
