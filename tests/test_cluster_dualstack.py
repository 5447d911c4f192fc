"""Dual-stack and IPv6-only clusters end to end (docs/flannel-compat.md §"Dual-stack",
§"IPv6-only"): namespace hosts with an IPv4 and an IPv6 (ULA fd00:2::/64) underlay address (or,
IPv6-only, the IPv6 one alone, etcd reached over IPv6), a real etcd, three daemons, containers
addressed from subnet.env in every family the network runs, TCP over each across every pair.
Every address is inside the lab's own namespaces."""
from __future__ import annotations

import ipaddress
import itertools
import json
import os
import re

import pytest

from fastflannel.lab import tcp_transfer, wait_for
from fastflannel.lab.cluster import PREFIX, Cluster

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

NET6 = "fc00:10::/48"


def dual_config(backend: dict) -> str:
    return json.dumps({"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0",
                       "SubnetMax": "10.99.0.0", "EnableIPv6": True, "IPv6Network": NET6,
                       "Backend": backend})


def v6only_config(backend: dict) -> str:
    return json.dumps({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": NET6, "Backend": backend})


HOSTGW = dual_config({"Type": "host-gw"})
VXLAN = dual_config({"Type": "vxlan", "VNI": 100, "Port": 8472})
HOSTGW6 = v6only_config({"Type": "host-gw"})
VXLAN6 = v6only_config({"Type": "vxlan", "VNI": 100, "Port": 8472})


@pytest.fixture
def lab6(lab):
    lab.ipv6 = True
    return lab


@pytest.fixture
def lab6only(lab):
    """Hosts whose underlay has no IPv4 address at all; etcd at http://[fd00:2::1]:2379."""
    lab.ipv6, lab.ipv4 = True, False
    return lab


def _subnets(env):
    """(IPv4 subnet or None when IPv6-only, IPv6 subnet) of a subnet.env."""
    v4 = ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network if "FLANNEL_SUBNET" in env else None
    return v4, ipaddress.ip_interface(env["FLANNEL_IPV6_SUBNET"]).network


def _key(v4, v6):
    """The lease key; IPv6-only leases have flannel's placeholder IPv4 half 0.0.0.0-0."""
    v4 = v4 or ipaddress.IPv4Network("0.0.0.0/0")
    return f"{v4.network_address}-{v4.prefixlen}&{v6.network_address}-{v6.prefixlen}"


def _all_pairs_tcp(lab, cluster, nbytes=256 << 10):
    for a, b in itertools.permutations(cluster.hosts, 2):
        ca, cb = cluster.containers[a], cluster.containers[b]
        for dst in (d for d in (cb.ip, cb.ip6) if d):
            ok = wait_for(lambda d=dst, ns=ca.ns: lab.sh(ns, f"ping -c1 -W1 {d}", check=False).returncode == 0,
                          15, 0.2)
            assert ok, f"{a} -> {b} {dst}\n{cluster.log(a)[-2000:]}"
            res = tcp_transfer(lab, ca.ns, cb.ns, dst, nbytes)
            assert res["ok"], (a, b, dst, res)


def _v6_route(lab, host, sn6):
    return lab.sh(host.ns, f"ip -6 route show {sn6}", check=False).stdout.strip()


def _expected_lease(cluster, h, value):
    """flannel's JSON, field for field; an IPv6-only host writes PublicIP 0.0.0.0 (ip.IP4's zero
    value) and no BackendData."""
    host = cluster.hosts[h]
    ip = host.ip or "0.0.0.0"
    lease = json.loads(value)
    if lease["BackendType"] == "host-gw":
        assert value == f'{{"PublicIP":"{ip}","PublicIPv6":"{host.ip6}","BackendType":"host-gw"}}'
        return
    v4_data = ["BackendData"] if host.ip else []
    assert list(lease) == ["PublicIP", "PublicIPv6", "BackendType", *v4_data, "BackendV6Data"]
    assert (lease["PublicIP"], lease["PublicIPv6"]) == (ip, host.ip6)
    assert list(lease["BackendV6Data"]) == ["VNI", "VtepMAC"] and lease["BackendV6Data"]["VNI"] == 100
    mac6 = lease["BackendV6Data"]["VtepMAC"]
    assert value.endswith(f'"BackendV6Data":{{"VNI":100,"VtepMAC":"{mac6}"}}}}'), value
    if host.ip:
        assert mac6 != lease["BackendData"]["VtepMAC"]


def _v6_peer_state_ok(lab, cluster, a, b, sn6, backend):
    """Host a's kernel state for peer b's IPv6 subnet, as flannel programs it."""
    ha, hb = cluster.hosts[a], cluster.hosts[b]
    route = _v6_route(lab, ha, sn6)
    if backend == "host-gw":
        return f"via {hb.ip6} dev eth0" in route
    mac6 = json.loads(next(v for k, v in cluster.leases().items() if k.endswith(f"&{sn6.network_address}-64")))[
        "BackendV6Data"]["VtepMAC"]
    neigh = lab.sh(ha.ns, "ip -6 neigh show dev flannel-v6.100", check=False).stdout
    fdb = lab.sh(ha.ns, "bridge fdb show dev flannel-v6.100", check=False).stdout
    return (re.search(rf"via {sn6.network_address} dev flannel-v6\.100 .*onlink", route) is not None
            and f"{sn6.network_address} lladdr {mac6} PERMANENT" in neigh
            and f"{mac6} dst {hb.ip6} self permanent" in fdb)


@pytest.mark.parametrize("config", [HOSTGW, VXLAN], ids=["host-gw", "vxlan"])
def test_dual_stack_three_hosts(lab6, config):
    lab = lab6
    backend = json.loads(config)["Backend"]["Type"]
    cluster = Cluster(lab, config, extra_flags=["-ip-masq"])
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
        _expected_lease(cluster, h, leases[_key(v4, v6)])
    assert len({v4 for v4, _ in subnets.values()}) == 3 and len({v6 for _, v6 in subnets.values()}) == 3
    cluster.add_containers()
    _all_pairs_tcp(lab, cluster)
    for a, b in itertools.permutations(cluster.hosts, 2):
        assert _v6_peer_state_ok(lab, cluster, a, b, subnets[b][1], backend), (a, b)
    if backend == "vxlan":
        dev = lab.sh(cluster.hosts["h1"].ns, "ip -d link show flannel-v6.100").stdout
        assert f"vxlan id 100 local {cluster.hosts['h1'].ip6} dev eth0" in dev and "mtu 1430" in dev, dev
        addr = lab.sh(cluster.hosts["h1"].ns, "ip -6 addr show dev flannel-v6.100").stdout
        assert f"{subnets['h1'][1].network_address}/128" in addr, addr

    # a restart keeps both subnets (reused by PublicIP and from subnet.env)
    assert cluster.stop("h2") == 0
    cluster.start("h2")
    assert _subnets(cluster.wait_subnet("h2")) == subnets["h2"]
    _all_pairs_tcp(lab, cluster, nbytes=64 << 10)

    # a deleted lease removes both families' state on the others: routes, and on vxlan the
    # neighbours and FDB entries of both devices
    assert cluster.stop("h3") == 0
    v4, v6 = subnets["h3"]
    lease3 = json.loads(cluster.leases()[_key(v4, v6)])
    lab.etcdctl("del", f"{PREFIX}/subnets/{_key(v4, v6)}")
    for h in ("h1", "h2"):
        host = cluster.hosts[h]
        gone = wait_for(lambda host=host: not _state_of(lab, host, v4, v6, lease3), 15, 0.2)
        assert gone, (h, _state_of(lab, host, v4, v6, lease3))


def test_three_hosts_starting_together_on_three_ipv4_subnets_each_hold_their_own(lab6):
    """A window of three IPv4 subnets and 100 IPv6 candidates: hosts starting together often
    pick one IPv4 subnet with different IPv6 ones, and both creates of a `v4&v6` key succeed.
    The later key must be given up (agent/subnets.py) and never programmed by the others
    (agent/peers.py): at the end, three leases, one per subnet of each family, each host routing
    the other two by their own PublicIP and PublicIPv6."""
    lab = lab6
    cfg = json.loads(HOSTGW)
    cfg["SubnetMax"] = "10.10.32.0"                   # 10.10.0.0/20, 10.10.16.0/20, 10.10.32.0/20
    cluster = Cluster(lab, json.dumps(cfg))
    cluster.start_all()
    subnets = {h: _subnets(e) for h, e in cluster.wait_all().items()}
    assert len({v4 for v4, _ in subnets.values()}) == 3 and len({v6 for _, v6 in subnets.values()}) == 3
    assert sorted(cluster.leases()) == sorted(_key(v4, v6) for v4, v6 in subnets.values())
    for a, b in itertools.permutations(cluster.hosts, 2):
        ha, hb = cluster.hosts[a], cluster.hosts[b]
        v4, v6 = subnets[b]
        ok = wait_for(lambda ha=ha, hb=hb, v4=v4, v6=v6: f"via {hb.ip} dev eth0" in lab.sh(
            ha.ns, f"ip route show {v4}").stdout and f"via {hb.ip6} dev eth0" in _v6_route(lab, ha, v6), 15, 0.2)
        assert ok, (a, b, lab.sh(ha.ns, "ip route; ip -6 route").stdout, cluster.log(a)[-2000:])


def _state_of(lab, host, v4, v6, lease) -> list:
    """What of a peer's kernel state (its lease `lease`) is still on `host` (v4 None: IPv6-only)."""
    route4 = lab.sh(host.ns, f"ip route show {v4}", check=False).stdout.strip() if v4 else ""
    left = [x for x in (route4, _v6_route(lab, host, v6)) if x]
    if lease["BackendType"] == "vxlan":
        devs = [("flannel-v6.100", v6.network_address, lease["BackendV6Data"]["VtepMAC"])]
        if v4 is not None:
            devs.append(("flannel.100", v4.network_address, lease["BackendData"]["VtepMAC"]))
        for dev, ip, mac in devs:
            neigh = lab.sh(host.ns, f"ip neigh show dev {dev}", check=False).stdout
            fdb = lab.sh(host.ns, f"bridge fdb show dev {dev}", check=False).stdout
            left += [line for line in neigh.splitlines() if line.startswith(f"{ip} ")]
            left += [line for line in fdb.splitlines() if line.startswith(mac)]
    return left


@pytest.mark.parametrize("config", [HOSTGW, VXLAN], ids=["host-gw", "vxlan"])
def test_a_mixed_cluster_runs_ipv4_between_all_and_ipv6_between_dual_stack_hosts(lab6, config):
    """flannel programs a peer's IPv6 state only when both run IPv6: h3 runs the config without
    EnableIPv6 (it reads the same etcd key: in practice a host started before the config gained
    IPv6 keeps its v4-only lease until it restarts)."""
    lab = lab6
    cluster = Cluster(lab, config)
    cluster.start("h1")
    cluster.start("h2")
    envs = {h: cluster.wait_subnet(h) for h in ("h1", "h2")}
    v4only = json.loads(config)
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
    if "vxlan" in config:
        assert lab.sh(cluster.hosts["h3"].ns, "ip link show flannel-v6.100", check=False).returncode != 0


def test_vxlan_v6_device_deleted_is_recreated_with_its_peers(lab6):
    lab = lab6
    cluster = Cluster(lab, VXLAN, hosts=("h1", "h2"))
    cluster.start_all()
    envs = cluster.wait_all()
    cluster.add_containers()
    c1, c2 = cluster.containers["h1"], cluster.containers["h2"]
    assert wait_for(lambda: lab.sh(c1.ns, f"ping -c1 -W1 {c2.ip6}", check=False).returncode == 0, 15, 0.2)
    lab.sh(cluster.hosts["h1"].ns, "ip link del flannel-v6.100")
    sn6 = _subnets(envs["h2"])[1]
    back = wait_for(lambda: _v6_peer_state_ok(lab, cluster, "h1", "h2", sn6, "vxlan"), 30, 0.5)
    assert back, cluster.log("h1")[-2000:]
    assert tcp_transfer(lab, c1.ns, c2.ns, c2.ip6, 64 << 10)["ok"]


@pytest.mark.parametrize("config, words", [
    (dual_config({"Type": "udp"}), "the udp backend carries IPv4 only"),
    (v6only_config({"Type": "udp"}), "IPv6-only): the udp backend carries IPv4 only"),
])
def test_what_the_daemon_cannot_run_ends_it_with_one_clear_line(lab6, config, words):
    cluster = Cluster(lab6, config, hosts=("h1",))
    p = cluster.start("h1")
    assert p.wait(30) == 1
    log = cluster.log("h1")
    last = log.strip().splitlines()[-1]
    assert "Traceback" not in log and last.startswith("fastflannel: ") and words in last, log[-1500:]
    assert cluster.leases() == {}                     # nothing was taken


def test_vxlan_v6_device_with_another_local_address_is_recreated(lab6):
    """A flannel-v6.<VNI> kept from a run on another IPv6 address would send from it: replaced."""
    cluster = Cluster(lab6, VXLAN, hosts=("h1",))
    h1 = cluster.hosts["h1"]
    lab6.sh(h1.ns, "ip link add flannel-v6.100 type vxlan id 100 local fd00:2::99 dev eth0 dstport 8472 nolearning")
    cluster.start("h1")
    cluster.wait_subnet("h1")
    dev = lab6.sh(h1.ns, "ip -d link show flannel-v6.100").stdout
    assert f"local {h1.ip6} " in dev and "fd00:2::99" not in dev, dev
    assert "incompatible configuration: local fd00:2::99" in cluster.log("h1")


def _restart_keeps(cluster, h, sn6, delete_lease=False):
    """Restart h (after deleting its lease: the subnet then comes from subnet.env's
    FLANNEL_IPV6_SUBNET, else the lease is found by PublicIPv6); it must get sn6 back."""
    assert cluster.stop(h) == 0
    if delete_lease:
        cluster.lab.etcdctl("del", f"{PREFIX}/subnets/{_key(None, sn6)}")
    cluster.start(h)
    assert _subnets(cluster.wait_subnet(h))[1] == sn6, cluster.log(h)[-2000:]


def test_ipv6_only_on_the_etcd_v2_store(lab6only):
    """IPv6-only vxlan on the v2 store (`-etcd-api=v2`, flannel v0.6-v0.13's layout): the same key
    and JSON under /v2/keys, TCP over IPv6 across every pair, a restart keeps the subnet."""
    lab = lab6only
    lab.start_etcd(["--enable-v2=true"])
    lab.etcdctl("set", f"{PREFIX}/config", VXLAN6, api="2")
    cluster = Cluster(lab, None, extra_flags=["-etcd-api=v2"])
    cluster.start_all()
    subnets = {h: _subnets(e)[1] for h, e in cluster.wait_all().items()}
    keys = lab.etcdctl("ls", f"{PREFIX}/subnets", api="2").stdout.split()
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == sorted(_key(None, sn6) for sn6 in subnets.values())
    for h, sn6 in subnets.items():
        value = lab.etcdctl("get", f"{PREFIX}/subnets/{_key(None, sn6)}", api="2").stdout.strip()
        _expected_lease(cluster, h, value)
    cluster.add_containers()
    _all_pairs_tcp(lab, cluster, nbytes=64 << 10)
    assert cluster.stop("h2") == 0
    cluster.start("h2")
    assert _subnets(cluster.wait_subnet("h2"))[1] == subnets["h2"], cluster.log("h2")[-2000:]


@pytest.mark.parametrize("config", [HOSTGW6, VXLAN6], ids=["host-gw", "vxlan"])
def test_ipv6_only_three_hosts(lab6only, config):
    """EnableIPv4 false: hosts with no IPv4 address anywhere, one IPv6 subnet each under flannel's
    key `0.0.0.0-0&<ipv6>-64`, subnet.env without the IPv4 lines, only IPv6 kernel state."""
    lab = lab6only
    backend = json.loads(config)["Backend"]["Type"]
    cluster = Cluster(lab, config, extra_flags=["-ip-masq"])
    assert "[fd00:2::1]" in lab.etcd_endpoint
    cluster.start_all()
    envs = cluster.wait_all()
    subnets = {h: _subnets(e)[1] for h, e in envs.items()}
    assert len(set(subnets.values())) == 3, envs
    leases = cluster.leases()
    assert sorted(leases) == sorted(_key(None, sn6) for sn6 in subnets.values()), leases
    mtu = "1430" if backend == "vxlan" else "1500"
    for h, sn6 in subnets.items():
        assert envs[h] == {"FLANNEL_IPV6_NETWORK": NET6, "FLANNEL_IPV6_SUBNET": f"{sn6.network_address + 1}/64",
                           "FLANNEL_MTU": mtu, "FLANNEL_IPMASQ": "true"}
        _expected_lease(cluster, h, leases[_key(None, sn6)])
        host = cluster.hosts[h]
        assert "inet " not in lab.sh(host.ns, "ip -4 addr show dev eth0").stdout     # no IPv4 underlay
        assert "FLANNEL" not in lab.sh(host.ns, "iptables-save").stdout       # no IPv4 rules at all
        assert f"! -s {NET6} -d {sn6} " in lab.sh(host.ns, "ip6tables-save -t nat").stdout
        if backend == "vxlan":
            assert lab.sh(host.ns, "ip link show flannel.100", check=False).returncode != 0
            dev = lab.sh(host.ns, "ip -d link show flannel-v6.100").stdout
            assert f"vxlan id 100 local {host.ip6} dev eth0" in dev, dev
    cluster.add_containers()
    assert all(c.ip == "" and c.ip6 for c in cluster.containers.values())
    _all_pairs_tcp(lab, cluster)
    for a, b in itertools.permutations(cluster.hosts, 2):
        assert _v6_peer_state_ok(lab, cluster, a, b, subnets[b], backend), (a, b)

    _restart_keeps(cluster, "h2", subnets["h2"])                       # by PublicIPv6
    _restart_keeps(cluster, "h2", subnets["h2"], delete_lease=True)    # from subnet.env
    _all_pairs_tcp(lab, cluster, nbytes=64 << 10)

    # a deleted lease removes the peer's state on the others
    assert cluster.stop("h3") == 0
    lease3 = json.loads(cluster.leases()[_key(None, subnets["h3"])])
    lab.etcdctl("del", f"{PREFIX}/subnets/{_key(None, subnets['h3'])}")
    for h in ("h1", "h2"):
        host = cluster.hosts[h]
        gone = wait_for(lambda host=host: not _state_of(lab, host, None, subnets["h3"], lease3), 15, 0.2)
        assert gone, (h, _state_of(lab, host, None, subnets["h3"], lease3))


@pytest.mark.parametrize("v6only", [True, False], ids=["ipv6-only", "dual-stack"])
def test_vxlan_ipv6_direct_routing_routes_same_link_peers_via_their_public_ipv6(lab, v6only):
    """DirectRouting: a peer on our link gets `S6 via PublicIPv6 dev eth0` and no neighbour or FDB
    entry on flannel-v6.<VNI> (flannel's v6DirectRoute); a deleted lease takes the route along."""
    lab.ipv6, lab.ipv4 = True, not v6only
    backend = {"Type": "vxlan", "VNI": 100, "Port": 8472, "DirectRouting": True}
    cluster = Cluster(lab, v6only_config(backend) if v6only else dual_config(backend), hosts=("h1", "h2", "h3"))
    cluster.start_all()
    subnets = {h: _subnets(e)[1] for h, e in cluster.wait_all().items()}
    cluster.add_containers()
    _all_pairs_tcp(lab, cluster, nbytes=64 << 10)
    for a, b in itertools.permutations(cluster.hosts, 2):
        ha, hb = cluster.hosts[a], cluster.hosts[b]
        assert f"via {hb.ip6} dev eth0" in _v6_route(lab, ha, subnets[b]), (a, b, _v6_route(lab, ha, subnets[b]))
        neigh = lab.sh(ha.ns, "ip -6 neigh show dev flannel-v6.100").stdout
        assert f"{subnets[b].network_address} " not in neigh, neigh
    assert cluster.stop("h3") == 0
    key3 = next(k for k in cluster.leases() if k.endswith(f"&{subnets['h3'].network_address}-64"))
    lab.etcdctl("del", f"{PREFIX}/subnets/{key3}")
    for h in ("h1", "h2"):
        assert wait_for(lambda h=h: not _v6_route(lab, cluster.hosts[h], subnets["h3"]), 15, 0.2), h


def test_ipv6_only_cloned_vtep_mac_is_noticed_and_replaced(lab6only):
    """Two IPv6-only hosts start with one IPv6 VTEP MAC (cloned images): the conflict is found by
    BackendV6Data's MAC and PublicIPv6 (every PublicIP is 0.0.0.0) and a new MAC is taken."""
    lab = lab6only
    cluster = Cluster(lab, VXLAN6)
    cloned = "0a:00:00:c1:0e:66"
    for h in ("h1", "h2"):
        with open(os.path.join(cluster.host_dir(h), f"vxlan6-100-{cluster.hosts[h].ip6}.mac"), "w") as f:
            f.write(cloned + "\n")
    cluster.start("h1")
    cluster.start("h3")
    cluster.wait_subnet("h1")
    cluster.wait_subnet("h3")
    cluster.start("h2")
    cluster.wait_all()

    def macs():
        return {k: json.loads(v)["BackendV6Data"]["VtepMAC"] for k, v in cluster.leases().items()}
    assert wait_for(lambda: len(set(macs().values())) == 3, 15), (macs(), cluster.log("h2")[-2000:])
    assert "announces this host's VTEP MAC " + cloned in cluster.log("h1") + cluster.log("h2")
    cluster.add_containers()
    _all_pairs_tcp(lab, cluster, nbytes=64 << 10)
