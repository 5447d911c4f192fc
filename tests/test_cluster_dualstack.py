"""Dual-stack clusters end to end (docs/flannel-compat.md §"Dual-stack"): namespace hosts with
an IPv4 and an IPv6 (ULA fd00:2::/64) underlay address, a real etcd, three daemons, containers
addressed from subnet.env in both families, TCP over IPv4 and over IPv6 across every pair.
Every address is inside the lab's own namespaces."""
from __future__ import annotations

import ipaddress
import itertools
import json

import pytest

from fastflannel.lab import tcp_transfer, wait_for
from fastflannel.lab.cluster import PREFIX, Cluster

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

NET6 = "fc00:10::/48"


def dual_config(backend: dict) -> str:
    return json.dumps({"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0",
                       "SubnetMax": "10.99.0.0", "EnableIPv6": True, "IPv6Network": NET6,
                       "Backend": backend})


HOSTGW = dual_config({"Type": "host-gw"})


@pytest.fixture
def lab6(lab):
    lab.ipv6 = True
    return lab


def _subnets(env):
    return (ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network,
            ipaddress.ip_interface(env["FLANNEL_IPV6_SUBNET"]).network)


def _key(v4, v6):
    return f"{v4.network_address}-{v4.prefixlen}&{v6.network_address}-{v6.prefixlen}"


def _all_pairs_tcp(lab, cluster, nbytes=256 << 10):
    for a, b in itertools.permutations(cluster.hosts, 2):
        ca, cb = cluster.containers[a], cluster.containers[b]
        for dst in (cb.ip, cb.ip6):
            ok = wait_for(lambda d=dst, ns=ca.ns: lab.sh(ns, f"ping -c1 -W1 {d}", check=False).returncode == 0,
                          15, 0.2)
            assert ok, f"{a} -> {b} {dst}\n{cluster.log(a)[-2000:]}"
            res = tcp_transfer(lab, ca.ns, cb.ns, dst, nbytes)
            assert res["ok"], (a, b, dst, res)


def _v6_route(lab, host, sn6):
    return lab.sh(host.ns, f"ip -6 route show {sn6}", check=False).stdout.strip()


def test_hostgw_dual_stack_three_hosts(lab6):
    lab = lab6
    cluster = Cluster(lab, HOSTGW, extra_flags=["-ip-masq"])
    cluster.start_all()
    envs = cluster.wait_all()
    subnets = {h: _subnets(e) for h, e in envs.items()}
    leases = cluster.leases()
    nat6 = lab.sh(cluster.hosts["h1"].ns, "ip6tables-save -t nat").stdout
    assert f"-A FLANNEL-POSTRTG ! -s {NET6} -d {subnets['h1'][1]} " in nat6, nat6     # flannel's MasqIP6Rules
    assert f"-s {NET6} ! -d ff00::/8" in nat6
    for h, (v4, v6) in subnets.items():
        assert v6.subnet_of(ipaddress.ip_network(NET6)) and v6.prefixlen == 64
        assert list(envs[h]) == ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK",
                                 "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"]
        assert envs[h]["FLANNEL_IPV6_NETWORK"] == NET6
        value = leases[_key(v4, v6)]
        assert value == (f'{{"PublicIP":"{cluster.hosts[h].ip}","PublicIPv6":"{cluster.hosts[h].ip6}",'
                         f'"BackendType":"host-gw"}}')
    assert len({v6 for _, v6 in subnets.values()}) == 3
    cluster.add_containers()
    _all_pairs_tcp(lab, cluster)
    for a, b in itertools.permutations(cluster.hosts, 2):
        route = _v6_route(lab, cluster.hosts[a], subnets[b][1])
        assert f"via {cluster.hosts[b].ip6} dev eth0" in route, route

    # a restart keeps both subnets (reused by PublicIP and from subnet.env)
    assert cluster.stop("h2") == 0
    cluster.start("h2")
    assert _subnets(cluster.wait_subnet("h2")) == subnets["h2"]
    _all_pairs_tcp(lab, cluster, nbytes=64 << 10)

    # a deleted lease removes both families' routes on the others
    assert cluster.stop("h3") == 0
    v4, v6 = subnets["h3"]
    lab.etcdctl("del", f"{PREFIX}/subnets/{_key(v4, v6)}")
    for h in ("h1", "h2"):
        host = cluster.hosts[h]
        gone = wait_for(lambda host=host: not _v6_route(lab, host, v6) and not lab.sh(
            host.ns, f"ip route show {v4}", check=False).stdout.strip(), 15, 0.2)
        assert gone, (h, _v6_route(lab, host, v6))


def test_a_mixed_cluster_runs_ipv4_between_all_and_ipv6_between_dual_stack_hosts(lab6):
    """flannel programs a peer's IPv6 state only when both run IPv6: h3 runs the config without
    EnableIPv6 (it reads the same etcd key: in practice a host started before the config gained
    IPv6 keeps its v4-only lease until it restarts)."""
    lab = lab6
    cluster = Cluster(lab, HOSTGW)
    cluster.start("h1")
    cluster.start("h2")
    envs = {h: cluster.wait_subnet(h) for h in ("h1", "h2")}
    v4only = json.loads(HOSTGW)
    del v4only["EnableIPv6"]
    cluster.put_config(json.dumps(v4only))
    cluster.start("h3")
    env3 = cluster.wait_subnet("h3")
    assert "FLANNEL_IPV6_SUBNET" not in env3
    sn3 = ipaddress.ip_interface(env3["FLANNEL_SUBNET"]).network
    assert f"{sn3.network_address}-20" in cluster.leases()        # an IPv4-only key
    cluster.add_containers()
    for a, b in itertools.permutations(cluster.hosts, 2):
        assert cluster.ping(a, b, timeout=15), (a, b, cluster.log(a)[-2000:])
    c1, c2 = cluster.containers["h1"], cluster.containers["h2"]
    assert tcp_transfer(lab, c1.ns, c2.ns, c2.ip6, 64 << 10)["ok"]
    assert cluster.containers["h3"].ip6 == ""
    _, v6_h1 = _subnets(envs["h1"])
    assert not _v6_route(lab, cluster.hosts["h3"], v6_h1)           # the v4-only host has no IPv6 state
