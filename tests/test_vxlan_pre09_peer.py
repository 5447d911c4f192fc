"""fastflannel vxlan nodes beside a flanneld < v0.9 vxlan node on the etcd v2 store.

The old node is played by the test with exactly the kernel state flanneld v0.6.2 makes
(backend/vxlan/device.go newVXLANDevice/Configure, network.go at v0.6.2; the same scheme up to
v0.8.0): `flannel.<VNI>` with nolearning and `app_solicit=3`, the kernel's own MAC, the address
`<lease IP>/<Network prefix>` (so the route `<Network> dev flannel.<VNI>`), one FDB entry per
peer lease (AddL2), and, on every neighbour request the kernel sends up (an "L3 miss"), the
neighbour of that remote container address with the VtepMAC of the lease whose subnet holds it,
state REACHABLE (handleL3Miss). Its lease is written as v0.6.2 writes it: `PUT prevExist=false
ttl=86400` with `{"PublicIP":…,"BackendType":"vxlan","BackendData":{"VtepMAC":…}}`.
(docs/flannel-compat.md §"The etcd v2 store".) Traffic must flow both ways.
"""
from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import threading

import pytest

from fastflannel.lab import tcp_transfer, wait_for
from fastflannel.lab.cluster import PREFIX, Cluster, seed_config

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

OLD_SUBNET = ipaddress.IPv4Network("10.50.0.0/20")     # inside the seed's SubnetMin..SubnetMax
NETWORK_PREFIX = 8                                       # the seed's Network 10.0.0.0/8
DEV = "flannel.100"                                      # the seed's VNI 100, port 8472
MISS = re.compile(r"^miss (\d+\.\d+\.\d+\.\d+) ")                  # `ip monitor neigh dev X` lines


class OldVxlanNode:
    """A namespace host with flanneld v0.6.2's vxlan state, kept up to date by the test."""

    def __init__(self, lab, host):
        self.lab, self.host, self.ns = lab, host, host.ns
        sh = lambda cmd: lab.sh(self.ns, cmd)                             # noqa: E731
        sh(f"ip link add {DEV} type vxlan id 100 dev eth0 local {host.ip} dstport 8472 nolearning")
        sh(f"echo 3 > /proc/sys/net/ipv4/neigh/{DEV}/app_solicit")
        sh(f"ip addr add {OLD_SUBNET.network_address}/{NETWORK_PREFIX} dev {DEV} && ip link set {DEV} up")
        self.mac = json.loads(sh(f"ip -j link show {DEV}").stdout)[0]["address"]
        self.peers: dict[ipaddress.IPv4Network, str] = {}                # subnet -> VtepMAC
        self.misses = 0
        self._monitor: subprocess.Popen | None = None

    def lease_value(self) -> str:
        return (f'{{"PublicIP":"{self.host.ip}","BackendType":"vxlan",'
                f'"BackendData":{{"VtepMAC":"{self.mac}"}}}}')

    def take_lease(self) -> None:
        key = f"{PREFIX}/subnets/{OLD_SUBNET.network_address}-{OLD_SUBNET.prefixlen}"
        self.lab.etcdctl("mk", "--ttl", "86400", key, self.lease_value(), api="2")   # prevExist=false

    def add_peers(self, leases: dict[str, str]) -> None:
        """handleSubnetEvents: for each vxlan lease, the route table entry and AddL2."""
        for key, value in leases.items():
            subnet = ipaddress.IPv4Network(key.replace("-", "/"))
            attrs = json.loads(value)
            if subnet == OLD_SUBNET or attrs.get("BackendType") != "vxlan":
                continue
            mac = attrs["BackendData"]["VtepMAC"]
            self.peers[subnet] = mac
            self.lab.sh(self.ns, f"bridge fdb append {mac} dev {DEV} dst {attrs['PublicIP']} self permanent")

    def start_l3_miss_handler(self) -> None:
        self._monitor = subprocess.Popen(self.lab.ns_cmd(self.ns, "ip", "monitor", "neigh", "dev", DEV),
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._handle, daemon=True).start()

    def _handle(self) -> None:
        assert self._monitor is not None and self._monitor.stdout is not None
        for line in self._monitor.stdout:
            m = MISS.match(line)
            if not m:
                continue
            ip = ipaddress.IPv4Address(m.group(1))
            mac = next((mac for sn, mac in self.peers.items() if ip in sn), None)
            if mac is None:
                continue                                                   # "Route for … not found"
            self.misses += 1
            self.lab.sh(self.ns, f"ip neigh replace {ip} lladdr {mac} dev {DEV} nud reachable", check=False)

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.kill()
            self._monitor.wait()


def _v2_leases(lab) -> dict[str, str]:
    keys = lab.etcdctl("ls", f"{PREFIX}/subnets", api="2").stdout.split()
    return {k.rsplit("/", 1)[1]: lab.etcdctl("get", k, api="2").stdout.rstrip("\n") for k in keys}


def test_traffic_both_ways_with_a_pre_v09_vxlan_node(lab):
    lab.start_etcd(["--enable-v2=true"])
    lab.etcdctl("set", f"{PREFIX}/config", seed_config("vxlan"), api="2")
    cluster = Cluster(lab, None, hosts=("h1", "h2", "h3"))            # h1 plays flanneld v0.6.2
    old = OldVxlanNode(lab, cluster.hosts["h1"])
    try:
        old.take_lease()
        for h in ("h2", "h3"):
            cluster.start(h)
        envs = {h: cluster.wait_subnet(h) for h in ("h2", "h3")}
        old.add_peers(_v2_leases(lab))
        old.start_l3_miss_handler()
        assert len(old.peers) == 2
        # Our nodes program the old one the v0.9+ way: neighbour, FDB entry, onlink route.
        for h in ("h2", "h3"):
            ns = cluster.hosts[h].ns
            assert wait_for(lambda ns=ns: f"{OLD_SUBNET} via {OLD_SUBNET.network_address} dev {DEV} onlink"
                            in lab.sh(ns, f"ip route show {OLD_SUBNET}").stdout, 10), cluster.log(h)
            assert f"{OLD_SUBNET.network_address} lladdr {old.mac} PERMANENT" in \
                lab.sh(ns, f"ip neigh show dev {DEV}").stdout
            fdb = lab.sh(ns, f"bridge fdb show dev {DEV}").stdout
            assert re.search(rf"{old.mac} dst {old.host.ip} self permanent", fdb), fdb
        env_old = {"FLANNEL_SUBNET": f"{OLD_SUBNET.network_address + 1}/{OLD_SUBNET.prefixlen}",
                   "FLANNEL_MTU": "1450"}
        cluster.containers["h1"] = lab.add_container(old.host, env_old)
        cluster.add_containers()
        for a, b in (("h1", "h2"), ("h2", "h1"), ("h1", "h3"), ("h3", "h1"), ("h2", "h3")):
            assert cluster.ping(a, b, timeout=15), f"{a} -> {b}\n{cluster.log('h2')[-1500:]}"
            res = tcp_transfer(lab, cluster.containers[a].ns, cluster.containers[b].ns,
                               cluster.containers[b].ip, 1 << 20)
            assert res["ok"], (a, b, res)
        assert old.misses >= 2, "the old node resolved our containers through L3 misses"
        assert envs["h2"]["FLANNEL_MTU"] == "1450"
    finally:
        old.close()
