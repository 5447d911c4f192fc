"""End to end with the kernel backends: the seed's vxlan config and host-gw, real etcd, netns hosts."""
from __future__ import annotations

import ipaddress
import itertools
import json
import re
import subprocess
import time

import pytest

from fastflannel.lab import tcp_transfer, wait_for
from fastflannel.lab.cluster import PREFIX, Cluster, seed_config

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

SEED_CONFIG_UDP, SEED_CONFIG_VXLAN, HOSTGW_CONFIG = (seed_config(b) for b in ("udp", "vxlan", "host-gw"))


def _subnet(env) -> ipaddress.IPv4Network:
    return ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network


def _all_pairs_tcp(lab, cluster, nbytes=1 << 20):
    for a, b in itertools.permutations(cluster.hosts, 2):
        assert cluster.ping(a, b, timeout=15), f"{a} -> {b}\n{cluster.log(a)[-2000:]}"
        res = tcp_transfer(lab, cluster.containers[a].ns, cluster.containers[b].ns,
                           cluster.containers[b].ip, nbytes)
        assert res["ok"], (a, b, res)


def _lease_json(cluster, subnet):
    return json.loads(cluster.leases()[f"{subnet.network_address}-{subnet.prefixlen}"])


def _vxlan_peer_state(lab, ns, peer_subnet, peer_mac, peer_ip):
    """(neighbour ok, fdb ok, route ok) for one peer on flannel.100 in namespace ns."""
    # check=False: while a deleted device is being recreated these commands fail; that is "not yet".
    neigh = lab.sh(ns, "ip neigh show dev flannel.100", check=False).stdout
    fdb = lab.sh(ns, "bridge fdb show dev flannel.100", check=False).stdout
    route = lab.sh(ns, f"ip route show {peer_subnet}", check=False).stdout
    return (f"{peer_subnet.network_address} lladdr {peer_mac} PERMANENT" in neigh,
            bool(re.search(rf"{peer_mac} dst {peer_ip} self permanent", fdb)),
            f"{peer_subnet} via {peer_subnet.network_address} dev flannel.100 onlink" in route)


def test_vxlan_seed_config_three_hosts(lab):
    cluster = Cluster(lab, SEED_CONFIG_VXLAN)
    cluster.start_all()
    envs = cluster.wait_all()
    subnets = {h: _subnet(e) for h, e in envs.items()}
    assert all(e["FLANNEL_MTU"] == "1450" for e in envs.values())        # 1500 - 50
    macs = {}
    for h, s in subnets.items():
        lease = _lease_json(cluster, s)
        assert list(lease) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData"]
        assert lease["BackendType"] == "vxlan" and lease["BackendData"]["VNI"] == 100
        assert list(lease["BackendData"]) == ["VNI", "VtepMAC"]
        macs[h] = lease["BackendData"]["VtepMAC"]
        link = lab.sh(cluster.hosts[h].ns, "ip -d link show flannel.100").stdout
        assert "vxlan id 100" in link and f"local {cluster.hosts[h].ip}" in link
        assert "dstport 8472" in link and "nolearning" in link
        assert f"link/ether {macs[h]}" in link
        addrs = lab.sh(cluster.hosts[h].ns, "ip -4 -o addr show dev flannel.100").stdout
        assert re.findall(r"inet (\S+)", addrs) == [f"{s.network_address}/32"]
    for h, peer in itertools.permutations(cluster.hosts, 2):
        assert wait_for(lambda h=h, peer=peer: all(_vxlan_peer_state(lab, cluster.hosts[h].ns, subnets[peer],
                                                                     macs[peer], cluster.hosts[peer].ip)),
                        10), (h, peer)
    cluster.add_containers()
    # Capture on the underlay while traffic crosses: VXLAN on UDP 8472 with VNI 100.
    cap = subprocess.Popen(lab.ns_cmd(cluster.hosts["h2"].ns, "tcpdump", "-ni", "eth0", "-c", "3", "-v", "-T", "vxlan",
                                      "udp port 8472"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
    time.sleep(0.5)
    _all_pairs_tcp(lab, cluster)
    try:
        out, _ = cap.communicate(timeout=10)
    finally:
        if cap.poll() is None:
            cap.kill()
    assert "VXLAN" in out and "vni 100" in out, out


def test_vxlan_peer_removal_restart_and_device_recreation(lab):
    cluster = Cluster(lab, SEED_CONFIG_VXLAN)
    cluster.start_all()
    envs = cluster.wait_all()
    subnets = {h: _subnet(e) for h, e in envs.items()}
    cluster.add_containers()
    assert cluster.ping("h1", "h2")
    mac2 = _lease_json(cluster, subnets["h2"])["BackendData"]["VtepMAC"]
    # Restart h2: same MAC and subnet, traffic resumes.
    assert cluster.stop("h2") == 0
    cluster.start("h2")
    assert _subnet(cluster.wait_subnet("h2")) == subnets["h2"]
    assert _lease_json(cluster, subnets["h2"])["BackendData"]["VtepMAC"] == mac2
    assert cluster.ping("h1", "h2") and cluster.ping("h2", "h1")
    # A deleted vxlan device is recreated and its peers re-programmed (within the 10 s check).
    lab.sh(cluster.hosts["h1"].ns, "ip link del flannel.100")
    assert wait_for(lambda: all(_vxlan_peer_state(lab, cluster.hosts["h1"].ns, subnets["h3"],
                                                  _lease_json(cluster, subnets["h3"])["BackendData"]["VtepMAC"],
                                                  cluster.hosts["h3"].ip)), 25)
    assert cluster.ping("h1", "h3")
    # Deleting h3's lease (daemon stopped first) removes its state on every other host.
    mac3 = _lease_json(cluster, subnets["h3"])["BackendData"]["VtepMAC"]
    cluster.stop("h3")
    lab.etcdctl("del", f"{PREFIX}/subnets/{subnets['h3'].network_address}-20")
    for h in ("h1", "h2"):
        assert wait_for(lambda h=h: not any(_vxlan_peer_state(lab, cluster.hosts[h].ns, subnets["h3"], mac3,
                                                              cluster.hosts["h3"].ip)), 10), h


def test_hostgw_three_hosts_and_route_repair(lab):
    cluster = Cluster(lab, HOSTGW_CONFIG)
    cluster.start_all()
    envs = cluster.wait_all()
    subnets = {h: _subnet(e) for h, e in envs.items()}
    assert all(e["FLANNEL_MTU"] == "1500" for e in envs.values())
    for h, s in subnets.items():
        assert cluster.leases()[f"{s.network_address}-20"] == \
            f'{{"PublicIP":"{cluster.hosts[h].ip}","PublicIPv6":null,"BackendType":"host-gw"}}'
    for h, peer in itertools.permutations(cluster.hosts, 2):
        want = f"{subnets[peer]} via {cluster.hosts[peer].ip} dev eth0"
        assert wait_for(lambda h=h, want=want: want in lab.sh(cluster.hosts[h].ns, "ip route").stdout, 10), (h, want)
    cluster.add_containers()
    _all_pairs_tcp(lab, cluster)
    # A route deleted by hand comes back within the periodic check (flannel: 10 s).
    ns1 = cluster.hosts["h1"].ns
    lab.sh(ns1, f"ip route del {subnets['h2']}")
    assert wait_for(lambda: f"{subnets['h2']} via" in lab.sh(ns1, "ip route").stdout, 25)
    assert cluster.ping("h1", "h2")


def test_switch_backend_udp_to_vxlan_leaves_no_stale_state(lab):
    cluster = Cluster(lab, SEED_CONFIG_UDP, hosts=("h1", "h2"))
    cluster.start_all()
    cluster.wait_all()
    for h in cluster.hosts:
        assert "flannel0" in lab.sh(cluster.hosts[h].ns, "ip -br link").stdout
    for h in list(cluster.hosts):
        assert cluster.stop(h) == 0
    cluster.put_config(SEED_CONFIG_VXLAN)
    cluster.start_all()
    envs = cluster.wait_all()
    for h in cluster.hosts:
        ns = cluster.hosts[h].ns
        assert envs[h]["FLANNEL_MTU"] == "1450"
        links = lab.sh(ns, "ip -br link").stdout
        assert "flannel0" not in links and "flannel.100" in links
        routes = lab.sh(ns, "ip route").stdout
        assert "dev flannel0" not in routes
    cluster.add_containers()
    assert cluster.ping("h1", "h2") and cluster.ping("h2", "h1")


def test_ip_masq_rules_installed_and_resynced(lab):
    cluster = Cluster(lab, HOSTGW_CONFIG, hosts=("h1",))
    cluster.start("h1", extra=["-ip-masq", "-iptables-resync=1"])
    env = cluster.wait_subnet("h1")
    assert env["FLANNEL_IPMASQ"] == "true"
    s = _subnet(env)
    ns = cluster.hosts["h1"].ns
    want = f'-A FLANNEL-POSTRTG -s {s} -d 10.0.0.0/8 -m comment --comment "flanneld masq" -j RETURN'
    assert want in lab.sh(ns, "iptables -t nat -S FLANNEL-POSTRTG").stdout
    assert "-A POSTROUTING" in lab.sh(ns, "iptables -t nat -S POSTROUTING").stdout
    assert '-A FLANNEL-FWD -s 10.0.0.0/8 -m comment --comment "flanneld forward" -j ACCEPT' in \
        lab.sh(ns, "iptables -S FLANNEL-FWD").stdout
    # Someone deletes a rule; the resync loop puts the whole set back.
    lab.sh(ns, f"iptables -t nat -D FLANNEL-POSTRTG -s {s} -d 10.0.0.0/8 -m comment "
               f"--comment 'flanneld masq' -j RETURN")
    assert want not in lab.sh(ns, "iptables -t nat -S FLANNEL-POSTRTG").stdout
    assert wait_for(lambda: want in lab.sh(ns, "iptables -t nat -S FLANNEL-POSTRTG").stdout, 10)
