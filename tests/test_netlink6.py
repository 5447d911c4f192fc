"""agent/netlink6.py against the kernel, in a namespace of the test's own (ULA addresses only,
nothing is sent): the IPv6 vxlan device, addresses, neighbours, FDB entries and routes the
backends' IPv6 halves program, and their errors."""
from __future__ import annotations

import ipaddress

import pytest

from fastflannel.agent import netlink, netlink6
from fastflannel.agent.errors import NetlinkError

A6 = ipaddress.IPv6Address
N6 = ipaddress.IPv6Network
pytestmark = pytest.mark.netns
MAC = "0a:00:00:00:66:01"


@pytest.fixture
def ns(lab):
    name = lab.add_ns("nl6")
    lab.sh(name, "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 && "
                 "ip link add eth0 type veth peer name p0 && ip -6 addr add fd00:2::10/64 dev eth0 nodad && "
                 "ip link set eth0 up && ip link set p0 up")
    netlink.set_netns(name)
    try:
        yield name
    finally:
        netlink.set_netns(None)


def test_vxlan_device_and_its_objects(lab, ns):
    eth0 = netlink.link_index("eth0")
    netlink6.vxlan6_create("flannel-v6.7", 7, A6("fd00:2::10"), eth0, 8472, False, False, MAC, 1430)
    dev = lab.sh(ns, "ip -d link show flannel-v6.7").stdout
    assert "vxlan id 7 local fd00:2::10 dev eth0" in dev and "dstport 8472" in dev and "nolearning" in dev
    assert f"link/ether {MAC}" in dev and "mtu 1430" in dev
    idx = netlink.link_index("flannel-v6.7")
    assert netlink6.vxlan6_local(idx) == A6("fd00:2::10")
    netlink.link_set_up("flannel-v6.7")
    netlink6.address6_replace(idx, A6("fc00:10:0:1::"), 128)
    assert A6("fc00:10:0:1::") in [a.ip for a in netlink6.addresses6(idx)]

    netlink6.neigh6_replace(idx, A6("fc00:10:0:2::"), "0a:00:00:00:66:02")
    netlink6.fdb6_replace(idx, "0a:00:00:00:66:02", A6("fd00:2::11"))
    netlink6.route6_replace(N6("fc00:10:0:2::/64"), A6("fc00:10:0:2::"), idx, onlink=True)
    assert "fc00:10:0:2:: lladdr 0a:00:00:00:66:02 PERMANENT" in lab.sh(ns, "ip -6 neigh show dev flannel-v6.7").stdout
    assert "0a:00:00:00:66:02 dst fd00:2::11 self permanent" in lab.sh(ns, "bridge fdb show dev flannel-v6.7").stdout
    route = lab.sh(ns, "ip -6 route show fc00:10:0:2::/64").stdout
    assert "via fc00:10:0:2:: dev flannel-v6.7" in route and "onlink" in route
    assert (A6("fc00:10:0:2::"), "0a:00:00:00:66:02") in [(n.ip, n.mac) for n in netlink6.neigh6_list(idx)]
    assert ("0a:00:00:00:66:02", A6("fd00:2::11")) in [(n.mac, n.ip) for n in netlink6.fdb6_list(idx)]
    assert [(r.dst, r.gateway) for r in netlink6.routes6(idx) if r.gateway] == [
        (N6("fc00:10:0:2::/64"), A6("fc00:10:0:2::"))]

    assert netlink6.route6_delete(N6("fc00:10:0:2::/64"), None, idx) is True
    assert netlink6.neigh6_delete(idx, A6("fc00:10:0:2::")) is True
    assert netlink6.fdb6_delete(idx, "0a:00:00:00:66:02", A6("fd00:2::11")) is True
    # deleting what is not there says so and raises nothing
    assert netlink6.route6_delete(N6("fc00:10:0:2::/64"), None, idx) is False
    assert netlink6.neigh6_delete(idx, A6("fc00:10:0:2::")) is False
    assert netlink6.fdb6_delete(idx, "0a:00:00:00:66:02", A6("fd00:2::11")) is False
    left = lab.sh(ns, "ip -6 route show; ip -6 neigh show; bridge fdb show dev flannel-v6.7").stdout
    assert "fc00:10:0:2" not in left and "0a:00:00:00:66:02" not in left


def test_host_gw_route_via_a_peer(lab, ns):
    eth0 = netlink.link_index("eth0")
    netlink6.route6_replace(N6("fc00:10:0:3::/64"), A6("fd00:2::12"), eth0)
    assert "fc00:10:0:3::/64 via fd00:2::12 dev eth0" in lab.sh(ns, "ip -6 route show").stdout
    netlink6.route6_replace(N6("fc00:10:0:3::/64"), A6("fd00:2::13"), eth0)        # replaced, not added
    assert [r.gateway for r in netlink6.routes6(eth0) if r.dst == N6("fc00:10:0:3::/64")] == [A6("fd00:2::13")]


def test_errors_name_the_operation_and_the_kernels_reason(ns):
    eth0 = netlink.link_index("eth0")
    with pytest.raises(NetlinkError, match="replace route fc00:10:0:4::/64 via fd00:99::1") as ei:
        netlink6.route6_replace(N6("fc00:10:0:4::/64"), A6("fd00:99::1"), eth0)      # gateway not on link
    assert ei.value.errno is not None
    netlink6.vxlan6_create("flannel-v6.8", 8, A6("fd00:2::10"), eth0)
    with pytest.raises(NetlinkError, match="create vxlan device flannel-v6.8.*File exists"):
        netlink6.vxlan6_create("flannel-v6.8", 8, A6("fd00:2::10"), eth0)
