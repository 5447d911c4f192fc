"""agent.netlink against a namespace this test makes: `netlink.set_netns()` points the module's
handle at it, and iproute2 inside the same namespace is the independent witness."""
from __future__ import annotations

import errno
import ipaddress
import re
import subprocess
import sys
import threading

import pytest

from fastflannel.agent import netlink
from fastflannel.agent.errors import FastflannelError

pytestmark = pytest.mark.netns

N = ipaddress.ip_network
A = ipaddress.ip_address


@pytest.fixture
def ns(lab):
    """A namespace with a veth pair eth0 (192.0.2.10/24, default via 192.0.2.1) / peer0."""
    name = lab.add_ns("nl")
    lab.sh(name, "ip link add eth0 type veth peer name peer0 && ip addr add 192.0.2.10/24 dev eth0 && "
                 "ip link set eth0 up && ip link set peer0 up && ip route add default via 192.0.2.1")
    netlink.set_netns(name)
    try:
        yield name
    finally:
        netlink.set_netns(None)


def sh(lab, ns, script):
    return lab.sh(ns, script).stdout


def test_links(lab, ns):
    idx = netlink.link_index("eth0")
    assert idx == int(sh(lab, ns, "cat /sys/class/net/eth0/ifindex"))
    assert netlink.link_index("nope0") is None and not netlink.link_exists("nope0")
    assert netlink.link_name(idx) == "eth0" and netlink.link_name(9999) is None
    info = netlink.link_info("eth0")
    assert info["name"] == "eth0" and info["kind"] == "veth" and info["mtu"] == 1500
    assert info["state"] == "up" and info["vxlan"] is None
    assert info["address"] == sh(lab, ns, "cat /sys/class/net/eth0/address").strip()
    assert [link["name"] for link in netlink.all_links()][0] == "lo"
    assert {"eth0", "peer0"} <= {link["name"] for link in netlink.all_links()}
    netlink.link_set_mtu("eth0", 1400)
    assert "mtu 1400" in sh(lab, ns, "ip link show eth0")
    netlink.link_set_address("peer0", "0a:00:00:00:00:42")
    assert "0a:00:00:00:00:42" in sh(lab, ns, "ip link show peer0")
    assert netlink.link_delete("peer0") is True
    assert netlink.link_delete("peer0") is False
    assert not netlink.link_exists("eth0")           # the veth peer went with it


def test_errors_name_operation_and_object(lab, ns):
    with pytest.raises(netlink.NetlinkError, match=r"set mtu of nope0: no such device") as ei:
        netlink.link_set_mtu("nope0", 1400)
    assert ei.value.errno == errno.ENODEV and isinstance(ei.value, FastflannelError)
    with pytest.raises(netlink.NetlinkError, match=r"get link nope0") as ei:
        netlink.link_info("nope0")
    with pytest.raises(netlink.NetlinkError, match=r"replace route 10\.1\.0\.0/16 via 10\.9\.9\.9 dev eth0") as ei:
        netlink.route_replace(N("10.1.0.0/16"), "10.9.9.9", "eth0")
    assert ei.value.errno == errno.ENETUNREACH


def test_encoder_errors_become_netlink_errors(lab, ns):
    """The request encoders raise ValueError for input the kernel never sees; the caller must
    still get one NetlinkError naming the request, not a stray ValueError."""
    with pytest.raises(netlink.NetlinkError, match=r"set MAC zz:00:00:00:00:01 on eth0: ValueError: "
                                                   r"bad MAC 'zz:00:00:00:00:01'") as ei:
        netlink.link_set_address("eth0", "zz:00:00:00:00:01")
    assert ei.value.errno is None
    with pytest.raises(netlink.NetlinkError, match=r"replace neighbour 10\.1\.0\.1 lladdr zz:.* dev eth0"):
        netlink.neigh_replace("10.1.0.1", "zz:00:00:00:00:01", "eth0")
    assert "zz" not in sh(lab, ns, "ip link show eth0; ip neigh show dev eth0")


def test_vxlan_create_and_attributes(lab, ns):
    eth0 = netlink.link_index("eth0")
    idx = netlink.vxlan_create("flannel.100", 100, "192.0.2.10", eth0, 8472, False, False,
                               "0a:11:22:33:44:55", 1450)
    assert idx == netlink.link_index("flannel.100")
    out = sh(lab, ns, "ip -d link show flannel.100")
    for attr in ("vxlan id 100", "local 192.0.2.10", "dev eth0", "dstport 8472", "nolearning",
                 "mtu 1450", "link/ether 0a:11:22:33:44:55"):
        assert attr in out, (attr, out)
    v = netlink.link_info("flannel.100")["vxlan"]
    assert v == {"id": 100, "local": A("192.0.2.10"), "group": None, "port": 8472, "learning": False,
                 "gbp": False, "l2miss": False, "l3miss": False, "link": eth0}
    netlink.vxlan_create("vx7", 7, "192.0.2.10", None, 0, True, True)
    v7 = netlink.link_info("vx7")["vxlan"]
    assert v7["port"] == 8472 and v7["learning"] and v7["gbp"] and v7["link"] is None
    out = sh(lab, ns, "ip -d link show vx7")
    assert " gbp" in out and "nolearning" not in out
    with pytest.raises(netlink.NetlinkError, match="create vxlan device vx7"):
        netlink.vxlan_create("vx7", 7, "192.0.2.10", None)


def test_ensure_single_address(lab, ns):
    sh(lab, ns, "ip link add br9 type bridge && ip addr add 10.99.0.0/32 dev br9 && "
                "ip addr add 10.98.0.1/24 dev br9 && ip addr add 172.16.0.1/24 dev br9")
    netlink.ensure_single_address("br9", "10.10.0.0", 32, within=N("10.0.0.0/8"))
    got = re.findall(r"inet (\S+)", sh(lab, ns, "ip -4 -o addr show dev br9"))
    assert sorted(got) == ["10.10.0.0/32", "172.16.0.1/24"]
    netlink.ensure_single_address("br9", A("10.10.0.0"), 32, within=N("10.0.0.0/8"))   # idempotent
    assert netlink.addresses("br9") == [ipaddress.ip_interface("172.16.0.1/24"),
                                        ipaddress.ip_interface("10.10.0.0/32")]
    netlink.ensure_single_address("br9", "10.20.0.0", 32)            # no `within`: all others go
    assert netlink.addresses("br9") == [ipaddress.ip_interface("10.20.0.0/32")]
    assert netlink.iface_of_address("10.20.0.0") == "br9"
    assert netlink.iface_of_address("192.0.2.10") == "eth0"
    assert netlink.iface_of_address("192.0.2.99") is None
    entry = netlink.address_entries("eth0")[0]
    assert entry.flags & netlink.IFA_F_PERMANENT and entry.scope == 0


def test_routes(lab, ns):
    assert netlink.default_route_iface() == "eth0"
    netlink.route_replace(N("10.10.16.0/20"), "192.0.2.11", "eth0")
    # proto boot, like `ip route` and flannel: iproute2 prints no "proto" for it
    assert "10.10.16.0/20 via 192.0.2.11 dev eth0 \n" in sh(lab, ns, "ip route")
    netlink.route_replace(N("10.10.16.0/20"), "192.0.2.12", "eth0")      # replace, not add
    assert sh(lab, ns, "ip route show 10.10.16.0/20").count("via") == 1
    sh(lab, ns, "ip link add flannel.1 type vxlan id 1 dstport 8472 && ip link set flannel.1 up")
    netlink.route_replace(N("10.10.32.0/20"), "10.10.32.0", "flannel.1", onlink=True)
    assert re.search(r"10\.10\.32\.0/20 via 10\.10\.32\.0 dev flannel\.1 .*onlink", sh(lab, ns, "ip route"))
    netlink.route_replace(N("10.10.0.0/20"), blackhole=True)
    assert "blackhole 10.10.0.0/20" in sh(lab, ns, "ip route")
    rs = {r.dst: r for r in netlink.route_list()}
    assert rs[N("10.10.16.0/20")].gateway == A("192.0.2.12") and rs[N("10.10.16.0/20")].dev == "eth0"
    assert rs[N("10.10.32.0/20")].onlink and rs[N("10.10.32.0/20")].dev == "flannel.1"
    assert rs[N("10.10.0.0/20")].type == netlink.RTN_BLACKHOLE
    assert rs[N("0.0.0.0/0")].gateway == A("192.0.2.1")
    assert all(r.dev == "flannel.1" for r in netlink.route_list("flannel.1"))
    assert [r.dst for r in netlink.route_list("flannel.1")] == [N("10.10.32.0/20")]
    oif, gw, src = netlink.route_get("10.10.32.7")
    assert (oif, gw) == (netlink.link_index("flannel.1"), A("10.10.32.0"))
    assert netlink.route_get("192.0.2.11") == (netlink.link_index("eth0"), None, A("192.0.2.10"))
    assert netlink.route_get("198.51.100.1")[1] == A("192.0.2.1")
    assert netlink.route_delete(N("10.10.16.0/20"), "192.0.2.12", "eth0") is True
    assert netlink.route_delete(N("10.10.16.0/20"), "192.0.2.12", "eth0") is False
    assert netlink.route_delete(N("10.10.32.0/20"), dev="gone0") is False
    assert netlink.route_delete(N("10.10.0.0/20"), blackhole=True) is True
    assert "10.10.16.0" not in sh(lab, ns, "ip route") and "blackhole" not in sh(lab, ns, "ip route")
    sh(lab, ns, "ip route del default")
    assert netlink.default_route_iface() is None


def test_neighbours_and_fdb(lab, ns):
    sh(lab, ns, "ip link add flannel.1 type vxlan id 1 dstport 8472 nolearning && ip link set flannel.1 up")
    netlink.neigh_replace("10.10.16.0", "0a:00:00:00:00:01", "flannel.1")
    netlink.neigh_replace("10.10.16.0", "0a:00:00:00:00:02", "flannel.1")
    assert sh(lab, ns, "ip neigh show dev flannel.1").strip() == "10.10.16.0 lladdr 0a:00:00:00:00:02 PERMANENT"
    assert netlink.neigh_list("flannel.1") == [netlink.Neighbour(A("10.10.16.0"), "0a:00:00:00:00:02", 0x80)]
    netlink.fdb_replace("0a:00:00:00:00:02", "flannel.1", "192.0.2.11")
    netlink.fdb_replace("0a:00:00:00:00:02", "flannel.1", "192.0.2.12")     # replace moves the entry
    netlink.fdb_replace("0a:00:00:00:00:03", "flannel.1", "192.0.2.13")
    fdb = sh(lab, ns, "bridge fdb show dev flannel.1")
    assert "0a:00:00:00:00:02 dst 192.0.2.12 self permanent" in fdb and "192.0.2.11" not in fdb
    entries = {e.mac: e for e in netlink.fdb_list("flannel.1")}
    assert entries["0a:00:00:00:00:02"].dst == A("192.0.2.12") and entries["0a:00:00:00:00:02"].permanent
    assert entries["0a:00:00:00:00:02"].flags & netlink.NTF_SELF
    assert netlink.fdb_delete("0a:00:00:00:00:02", "flannel.1", "192.0.2.12") is True
    assert netlink.fdb_delete("0a:00:00:00:00:02", "flannel.1", "192.0.2.12") is False
    assert netlink.fdb_delete("0a:00:00:00:00:03", "flannel.1") is True
    assert "0a:00:00:00:00" not in sh(lab, ns, "bridge fdb show dev flannel.1")
    assert netlink.neigh_delete("10.10.16.0", "flannel.1") is True
    assert netlink.neigh_delete("10.10.16.0", "flannel.1") is False
    assert netlink.neigh_delete("10.10.16.0", "gone0") is False
    assert sh(lab, ns, "ip neigh show dev flannel.1").strip() == ""


def test_threads_share_the_handle(lab, ns):
    errors = []

    def worker(k):
        try:
            for i in range(20):
                netlink.route_replace(N(f"10.{k}.{i}.0/24"), "192.0.2.11", "eth0")
                assert netlink.link_index("eth0")
        except Exception as e:  # collected and asserted below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(1, 5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert len([r for r in netlink.route_list("eth0") if r.gateway == A("192.0.2.11")]) == 80


def test_works_inside_ip_netns_exec(lab, ns):
    """Production mode: no set_netns, the process itself runs in the namespace."""
    code = ("from fastflannel.agent import netlink; "
            "print(netlink.default_route_iface(), netlink.iface_of_address('192.0.2.10'))")
    out = subprocess.run(lab.ns_cmd(ns, sys.executable, "-c", code), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["eth0", "eth0"]
