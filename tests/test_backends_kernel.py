"""vxlan and host-gw backends against real kernel devices: hosts are Lab namespaces on one
underlay bridge (192.0.2.0/24); each host runs a small driver process inside its namespace that
holds one backend object and executes commands (setup, add/remove/sync peers, check) sent as JSON
lines, so backend state survives between steps just as in the daemon. Peers are fake leases; no
etcd is involved. Kernel state is read back with iproute2 (`ip -d link`, `ip neigh`, `bridge fdb`,
`ip route`), and traffic is sent only between addresses inside the namespaces made here.
"""
from __future__ import annotations

import re
import subprocess
import time

import pytest

from support.kernel_nodes import VX_CFG, assert_no_peer_state, assert_peer_state, ping

pytestmark = pytest.mark.netns


def vxlan_cluster(make, names=("h1", "h2", "h3")):
    ns = make(*names)
    for n in ns:
        n.start()
        n.setup()
    for n in ns:
        n.call("sync_peers", leases=[m.lease() for m in ns if m is not n])
    return ns


def test_vxlan_device_matches_flannel(nodes):
    (h1,) = nodes("h1")
    h1.start()
    mac = h1.attrs["BackendData"]["VtepMAC"]
    assert h1.attrs == {"PublicIP": "192.0.2.10", "PublicIPv6": None, "BackendType": "vxlan",
                        "BackendData": {"VNI": 100, "VtepMAC": mac}}
    assert list(h1.attrs["BackendData"]) == ["VNI", "VtepMAC"]
    assert int(mac[:2], 16) & 0x03 == 0x02                 # locally administered unicast
    assert h1.mtu == 1450
    h1.setup()
    link = h1.sh("ip -d link show flannel.100")
    assert "mtu 1450" in link and f"link/ether {mac}" in link and "UP" in link.split(">")[0]
    for attr in ("vxlan id 100", "local 192.0.2.10", "dev eth0", "dstport 8472", "nolearning"):
        assert attr in link, (attr, link)
    assert "gbp" not in link
    addrs = h1.sh("ip -4 -o addr show dev flannel.100")
    assert re.findall(r"inet (\S+)", addrs) == ["10.10.0.0/32"]
    # setup twice is harmless and keeps the same device
    idx = h1.sh("cat /sys/class/net/flannel.100/ifindex")
    h1.setup()
    assert h1.sh("cat /sys/class/net/flannel.100/ifindex") == idx


def test_vxlan_options_vni_port_gbp_learning_mtu(nodes):
    (h1,) = nodes("h1")
    h1.start(cfg={"type": "vxlan", "vni": 7, "port": 4789, "gbp": True, "learning": True, "mtu": 1400})
    assert h1.mtu == 1350 and h1.attrs["BackendData"]["VNI"] == 7
    h1.setup()
    link = h1.sh("ip -d link show flannel.7")
    for attr in ("vxlan id 7", "dstport 4789", "gbp", "mtu 1350"):
        assert attr in link, (attr, link)
    assert "nolearning" not in link


def test_vxlan_extra_in_network_addresses_removed(nodes):
    (h1,) = nodes("h1")
    h1.start()
    h1.sh("ip link add flannel.100 type vxlan id 100 dstport 8472 local 192.0.2.10 dev eth0 nolearning && "
          "ip addr add 10.99.0.0/32 dev flannel.100 && ip addr add 172.16.5.1/24 dev flannel.100")
    h1.setup()
    addrs = re.findall(r"inet (\S+)", h1.sh("ip -4 -o addr show dev flannel.100"))
    assert sorted(addrs) == ["10.10.0.0/32", "172.16.5.1/24"]


def test_vxlan_incompatible_device_replaced_compatible_reused(nodes):
    (h1,) = nodes("h1")
    h1.start()
    h1.sh("ip link add flannel.100 type vxlan id 100 dstport 4789 local 192.0.2.10 dev eth0 nolearning")
    old = h1.sh("cat /sys/class/net/flannel.100/ifindex")
    h1.setup()
    assert "dstport 8472" in h1.sh("ip -d link show flannel.100")
    new = h1.sh("cat /sys/class/net/flannel.100/ifindex")
    assert new != old
    assert "already exists with incompatible configuration" in h1.stop()
    h1.start()
    h1.setup()
    assert h1.sh("cat /sys/class/net/flannel.100/ifindex") == new


def test_vxlan_peers_programmed_and_ping_crosses_overlay(nodes):
    h1, h2, h3 = vxlan_cluster(nodes)
    for n in (h1, h2, h3):
        for p in (h1, h2, h3):
            if p is not n:
                assert_peer_state(n, p)
    # capture on h2's underlay while h1 pings h2's flannel.100 address (-T vxlan: port 8472
    # would otherwise be decoded as OTV)
    cap = subprocess.Popen(h2.lab.ns_cmd(h2.ns, "tcpdump", "-i", "eth0", "-nn", "-l", "-c", "2", "-T", "vxlan",
                                         "udp", "port", "8472"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert ping(h1, "10.10.16.0")
        out, _ = cap.communicate(timeout=10)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    assert "vni 100" in out, out
    assert "192.0.2.10" in out and "192.0.2.11" in out and "10.10.0.0 > 10.10.16.0" in out, out
    assert ping(h3, "10.10.0.0") and ping(h2, "10.10.32.0")


def test_vxlan_remove_peer_deletes_neighbour_fdb_and_route(nodes):
    h1, h2, h3 = vxlan_cluster(nodes)
    h1.call("remove_peer", lease=h2.lease())
    assert_no_peer_state(h1, h2)
    assert_peer_state(h1, h3)
    assert not ping(h1, "10.10.16.0", count=1)
    assert ping(h1, "10.10.32.0")


def test_vxlan_non_vxlan_and_own_leases_ignored(nodes):
    h1, h2 = nodes("h1", "h2")
    h1.start()
    h1.setup()
    h1.call("add_peer", lease={"subnet": "10.10.48.0/20", "ip": "192.0.2.50", "type": "host-gw"})
    h1.call("add_peer", lease={"subnet": "10.10.64.0/20", "ip": "192.0.2.51"})          # udp
    h1.call("add_peer", lease=h1.lease())
    assert h1.sh("ip route show dev flannel.100").strip() == ""
    assert h1.sh("ip neigh show dev flannel.100").strip() == ""
    # a programmed peer that switches to another backend loses its vxlan state
    h1.call("add_peer", lease=h2.lease_of("vxlan"))
    assert "10.10.16.0/20" in h1.sh("ip route show dev flannel.100")
    h1.call("add_peer", lease=h2.lease_of("host-gw"))
    assert h1.sh("ip route show dev flannel.100").strip() == ""
    assert h1.sh("ip neigh show dev flannel.100").strip() == ""
    assert "dst 192.0.2.11" not in h1.sh("bridge fdb show dev flannel.100")
    assert "ignoring non-vxlan v4 subnet(10.10.48.0/20): type=host-gw" in h1.stop()


def test_vxlan_peer_mac_change_drops_old_fdb_entry(nodes):
    h1, h2 = vxlan_cluster(nodes, ("h1", "h2"))
    old_mac = h2.attrs["BackendData"]["VtepMAC"]
    lease = h2.lease()
    lease["data"] = {"VNI": 100, "VtepMAC": "0a:bb:cc:dd:ee:01"}
    h1.call("add_peer", lease=lease)
    fdb = h1.sh("bridge fdb show dev flannel.100")
    assert old_mac not in fdb and "0a:bb:cc:dd:ee:01 dst 192.0.2.11 self permanent" in fdb
    assert "lladdr 0a:bb:cc:dd:ee:01 PERMANENT" in h1.sh("ip neigh show dev flannel.100")


def test_vxlan_mac_persisted_across_restart(nodes, tmp_path):
    (h1,) = nodes("h1")
    h1.start()
    mac = h1.attrs["BackendData"]["VtepMAC"]
    assert open(f"{h1.state_dir}/vxlan-100-{h1.ip}.mac").read().strip() == mac   # keyed by PublicIP
    h1.setup()
    h1.start()                                       # a restart: same state dir, same MAC
    assert h1.attrs["BackendData"]["VtepMAC"] == mac
    h1.start(state_dir=str(tmp_path / "fresh"))      # no file: adopt the kept device's MAC
    assert h1.attrs["BackendData"]["VtepMAC"] == mac
    h1.sh("ip link del flannel.100")
    h1.start(state_dir=str(tmp_path / "fresh2"))     # no file, no device: a new random MAC
    assert h1.attrs["BackendData"]["VtepMAC"] != mac
    h1.start()
    h1.setup()                                       # the device is recreated with the stored MAC
    assert f"link/ether {mac}" in h1.sh("ip link show flannel.100")


def test_vxlan_check_recreates_deleted_device_and_replays_peers(nodes):
    h1, h2, h3 = vxlan_cluster(nodes)
    h1.sh("ip link del flannel.100")
    assert not ping(h1, "10.10.16.0", count=1)
    h1.call("check")
    link = h1.sh("ip -d link show flannel.100")
    assert "vxlan id 100" in link and f"link/ether {h1.attrs['BackendData']['VtepMAC']}" in link
    assert re.findall(r"inet (\S+)", h1.sh("ip -4 -o addr show dev flannel.100")) == ["10.10.0.0/32"]
    assert_peer_state(h1, h2)
    assert_peer_state(h1, h3)
    assert ping(h1, "10.10.16.0") and ping(h1, "10.10.32.0")


def test_vxlan_check_repairs_a_deleted_route(nodes):
    h1, h2 = vxlan_cluster(nodes, ("h1", "h2"))
    h1.sh("ip route del 10.10.16.0/20")
    h1.call("check")
    assert_peer_state(h1, h2)
    assert ping(h1, "10.10.16.0")


def test_vxlan_sync_peers_prunes_stale_state(nodes):
    h1, h2, h3 = vxlan_cluster(nodes)
    # leftovers of a peer this process never heard of (e.g. it went away while we were down)
    h1.sh("ip neigh replace 10.10.80.0 lladdr 0a:00:00:00:00:99 dev flannel.100 nud permanent && "
          "bridge fdb replace 0a:00:00:00:00:99 dev flannel.100 dst 192.0.2.99 self permanent && "
          "ip route replace 10.10.80.0/20 via 10.10.80.0 dev flannel.100 onlink")
    h1.start()                                       # restart, then the first full list lacks h3
    h1.setup()
    h1.call("sync_peers", leases=[h2.lease()])
    assert_peer_state(h1, h2)
    assert_no_peer_state(h1, h3)
    assert "10.10.80.0" not in h1.sh("ip neigh show dev flannel.100; ip route show dev flannel.100")
    assert "0a:00:00:00:00:99" not in h1.sh("bridge fdb show dev flannel.100")
    # a later re-list that drops h2 removes what this process programmed itself
    h1.call("sync_peers", leases=[])
    assert_no_peer_state(h1, h2)


def test_vxlan_direct_routing_uses_plain_route_on_link(nodes):
    h1, h2 = nodes("h1", "h2")
    cfg = dict(VX_CFG, DirectRouting=True)
    for n in (h1, h2):
        n.start(cfg=cfg)
        n.setup()
        n.sh(f"ip link add cni0 type bridge && ip addr add {n.subnet.network_address + 1}/20 dev cni0 && "
             "ip link set cni0 up")
    h1.call("sync_peers", leases=[h2.lease()])
    h2.call("sync_peers", leases=[h1.lease()])
    assert re.search(r"^10\.10\.16\.0/20 via 192\.0\.2\.11 dev eth0", h1.sh("ip route show 10.10.16.0/20"), re.M)
    assert h1.sh("bridge fdb show dev flannel.100").count("dst") == 0
    assert ping(h1, "10.10.16.1", src="10.10.0.1")
    h1.call("remove_peer", lease=h2.lease())
    assert h1.sh("ip route show 10.10.16.0/20").strip() == ""


# -- host-gw -----------------------------------------------------------------------------------

def hostgw_cluster(make, names=("h1", "h2")):
    ns = make(*names)
    for n in ns:
        n.start(kind="host-gw", cfg={"Type": "host-gw"})
        n.setup()
        n.sh(f"ip link add cni0 type bridge && ip addr add {n.subnet.network_address + 1}/20 dev cni0 && "
             "ip link set cni0 up")
    for n in ns:
        n.call("sync_peers", leases=[m.lease() for m in ns if m is not n])
    return ns


def test_hostgw_lease_mtu_routes_and_ping(nodes):
    h1, h2 = hostgw_cluster(nodes)
    assert h1.attrs == {"PublicIP": "192.0.2.10", "PublicIPv6": None, "BackendType": "host-gw"}
    assert h1.mtu == 1500
    assert re.search(r"^10\.10\.16\.0/20 via 192\.0\.2\.11 dev eth0", h1.sh("ip route show 10.10.16.0/20"), re.M)
    assert re.search(r"^10\.10\.0\.0/20 via 192\.0\.2\.10 dev eth0", h2.sh("ip route show 10.10.0.0/20"), re.M)
    assert ping(h1, "10.10.16.1", src="10.10.0.1")
    h1.call("remove_peer", lease=h2.lease())
    assert h1.sh("ip route show 10.10.16.0/20").strip() == ""
    assert not ping(h1, "10.10.16.1", src="10.10.0.1", count=1)


def test_hostgw_conflicting_route_replaced_identical_kept(nodes):
    h1, h2 = nodes("h1", "h2")
    h1.start(kind="host-gw", cfg={"Type": "host-gw"})
    h1.setup()
    h1.sh("ip route add 10.10.16.0/20 via 192.0.2.1 dev eth0")
    h1.call("add_peer", lease={"subnet": "10.10.16.0/20", "ip": "192.0.2.11", "type": "host-gw"})
    routes = h1.sh("ip route show 10.10.16.0/20")
    lines = routes.strip().splitlines()
    assert lines == [line for line in lines if "via 192.0.2.11 dev eth0" in line]
    assert len(routes.strip().splitlines()) == 1
    h1.call("add_peer", lease={"subnet": "10.10.16.0/20", "ip": "192.0.2.11", "type": "host-gw"})
    assert h1.sh("ip route show 10.10.16.0/20") == routes


def test_hostgw_check_readds_missing_route(nodes):
    h1, h2 = hostgw_cluster(nodes)
    h1.sh("ip route del 10.10.16.0/20")
    assert not ping(h1, "10.10.16.1", src="10.10.0.1", count=1)
    h1.call("check")
    assert "via 192.0.2.11 dev eth0" in h1.sh("ip route show 10.10.16.0/20")
    assert ping(h1, "10.10.16.1", src="10.10.0.1")
    assert "was missing" in h1.stop()


def test_hostgw_sync_prunes_and_ignores_other_types(nodes):
    (h1,) = nodes("h1")
    h1.start(kind="host-gw", cfg={"Type": "host-gw"})
    h1.setup()
    h1.sh("ip route add 10.10.96.0/20 via 192.0.2.77 dev eth0 && ip route add 172.16.0.0/16 via 192.0.2.1 dev eth0")
    h1.call("sync_peers", leases=[{"subnet": "10.10.16.0/20", "ip": "192.0.2.11", "type": "host-gw"},
                                  {"subnet": "10.10.32.0/20", "ip": "192.0.2.12", "type": "vxlan",
                                   "data": {"VNI": 1, "VtepMAC": "0a:00:00:00:00:01"}}])
    routes = h1.sh("ip route")
    assert "10.10.16.0/20 via 192.0.2.11 dev eth0" in routes
    assert "10.10.96.0/20" not in routes and "10.10.32.0/20" not in routes
    assert "172.16.0.0/16 via 192.0.2.1" in routes            # outside Network: not ours
    # the peer switches to vxlan: its host-gw route goes
    h1.call("add_peer", lease={"subnet": "10.10.16.0/20", "ip": "192.0.2.11", "type": "vxlan",
                               "data": {"VNI": 1, "VtepMAC": "0a:00:00:00:00:02"}})
    assert "10.10.16.0/20" not in h1.sh("ip route")
