"""IPv6-only (EnableIPv4 false) formats and admission (docs/flannel-compat.md §"IPv6-only"):
the lease key and JSON byte for byte as flannel v0.28.9 writes them (`MakeSubnetKey` with the
zero IP4Net, `LeaseAttrs` with PublicIP 0.0.0.0 and no BackendData), subnet.env without the IPv4
lines (`WriteSubnetFile`), docker-opts and the CNI delegate from that file, and which leases a
host of an IPv6-only network admits: the placeholder 0.0.0.0/0 there and nowhere else."""
from __future__ import annotations

import logging
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest

from fastflannel.agent import cni, dockeropts
from fastflannel.agent.config import parse_config
from fastflannel.agent.lease import (
    NO_SUBNET,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    decode_attrs,
    encode_attrs,
    parse_lease_key,
    subnet_key,
)
from fastflannel.agent.peers import PeerTracker
from fastflannel.agent.subnetfile import read_prev_ipv6_subnet, read_prev_subnet, write_subnet_file

V6ONLY = parse_config('{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:1::/48",'
                      '"Backend":{"Type":"vxlan","VNI":1}}')
DUAL = parse_config('{"Network":"10.0.0.0/8","SubnetLen":20,"EnableIPv6":true,"IPv6Network":"fc00:1::/48",'
                    '"Backend":{"Type":"vxlan","VNI":1}}')
MAC6 = "5a:de:b8:9b:1d:d7"


def vx6(pub6: str, mac6: str = MAC6) -> LeaseAttrs:
    return LeaseAttrs(A(0), "vxlan", None, A6(pub6), {"VNI": 1, "VtepMAC": mac6})


def lease6(sn6: str, pub6: str, mac6: str = MAC6, v4: N = NO_SUBNET) -> Lease:
    return Lease(v4, vx6(pub6, mac6), 1000.0, ipv6_subnet=N6(sn6))


# -- key and JSON -----------------------------------------------------------------------------------

def test_key_is_flannels_with_the_zero_ipv4_half():
    assert subnet_key(NO_SUBNET, N6("fc00:1:2::/64")) == "0.0.0.0-0&fc00:1:2::-64"
    assert parse_lease_key("/coreos.com/network/subnets/0.0.0.0-0&fc00:1:2::-64") == (NO_SUBNET, N6("fc00:1:2::/64"))
    assert lease6("fc00:1:2::/64", "fd00::3").slot == N6("fc00:1:2::/64")
    assert Lease(N("10.1.2.0/24"), None, ipv6_subnet=N6("fc00:1:2::/64")).slot == N("10.1.2.0/24")


def test_vxlan_value_bytes():
    assert encode_attrs(vx6("fd00:2::a")) == (b'{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:2::a","BackendType":"vxlan",'
                                               b'"BackendV6Data":{"VNI":1,"VtepMAC":"5a:de:b8:9b:1d:d7"}}')


def test_hostgw_value_bytes():
    attrs = LeaseAttrs(A(0), "host-gw", None, A6("fd00:2::a"))
    assert encode_attrs(attrs) == b'{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:2::a","BackendType":"host-gw"}'


def test_decode_a_flannel_ipv6_only_value():
    raw = (b'{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:2::a","BackendType":"vxlan",'
           b'"BackendV6Data":{"VNI":1,"VtepMAC":"5a:de:b8:9b:1d:d7"}}')
    assert decode_attrs(raw) == vx6("fd00:2::a")


# -- subnet.env, docker-opts, CNI -------------------------------------------------------------------

def test_subnet_env_exact_bytes_and_read_back(tmp_path):
    """flannel's WriteSubnetFile with EnableIPv4 false: no FLANNEL_NETWORK/FLANNEL_SUBNET."""
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), None, None, 1430, True, (N6("fc00:1::/48"), N6("fc00:1:0:2a::/64")))
    assert p.read_bytes() == (b"FLANNEL_IPV6_NETWORK=fc00:1::/48\n"
                              b"FLANNEL_IPV6_SUBNET=fc00:1:0:2a::1/64\n"
                              b"FLANNEL_MTU=1430\n"
                              b"FLANNEL_IPMASQ=true\n")
    assert read_prev_subnet(str(p)) is None
    assert read_prev_ipv6_subnet(str(p)) == N6("fc00:1:0:2a::/64")


def test_docker_opts_and_cni_from_an_ipv6_only_subnet_env(tmp_path):
    """mk-docker-opts.sh sets --bip only from FLANNEL_SUBNET (none here), and the CNI plugin
    takes the IPv6 subnet as its one range and IPv6Network as its one route, as flannel's."""
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), None, None, 1430, False, (N6("fc00:1::/48"), N6("fc00:1:0:2a::/64")))
    args = dockeropts.parse_args(["-f", str(p), "-d", str(tmp_path / "docker")])
    env = dockeropts.shell_vars(args, {})
    opts = dockeropts.docker_options(args, env)
    assert "DOCKER_OPT_BIP" not in opts and opts["DOCKER_OPT_MTU"] == "--mtu=1430"
    ipam = cni.delegate_config({"name": "n"}, cni.load_subnet_env(str(p)))["ipam"]
    assert ipam["ranges"] == [[{"subnet": "fc00:1:0:2a::/64"}]]
    assert ipam["routes"] == [{"dst": "fc00:1::/48"}]


# -- admission --------------------------------------------------------------------------------------

OWN6 = N6("fc00:1:0:1::/64")


def tracker(cfg=V6ONLY, own=OWN6, pub6="fd00:2::10", mac6="0a:00:00:00:66:10"):
    return PeerTracker(own, vx6(pub6, mac6), cfg)


def add(t, *leases):
    return t.apply([LeaseEvent(LeaseEvent.ADDED, x) for x in leases])


def test_ipv6_only_peers_are_told_apart_by_their_ipv6_subnet():
    t = tracker()
    a = lease6("fc00:1:0:2::/64", "fd00:2::11", "0a:00:00:00:66:11")
    b = lease6("fc00:1:0:3::/64", "fd00:2::12", "0a:00:00:00:66:12")
    assert [e.lease.key for e in add(t, a, b)] == [a.key, b.key]
    assert [x.key for x in t.leases()] == [a.key, b.key]
    evs = t.apply([LeaseEvent(LeaseEvent.REMOVED, Lease(NO_SUBNET, None, ipv6_subnet=N6("fc00:1:0:2::/64")))])
    assert [(e.kind, e.lease.key) for e in evs] == [(LeaseEvent.REMOVED, a.key)]
    assert [x.key for x in t.leases()] == [b.key]
    # our own lease is not a peer
    assert add(t, lease6("fc00:1:0:1::/64", "fd00:2::10", "0a:00:00:00:66:10")) == []


@pytest.mark.parametrize("bad,words", [
    (lease6("fc00:1:0:2::/64", "fd00:2::11", v4=N("10.1.0.0/24")), "in an IPv6-only network"),
    (Lease(NO_SUBNET, vx6("fd00:2::11"), 1000.0), "no IPv6 subnet"),
    (lease6("fc00:1:0:9::/64", "fd00:2::10", "0a:00:00:00:66:99"), "PublicIPv6 fd00:2::10 is this host's"),
    (lease6("fc00:9:0:2::/64", "fd00:2::11"), "outside the IPv6Network"),
    (lease6("fc00:1:0:2::/64", "fd00:2::11", "0a:00:00:00:66:10"), "this host's own VTEP MAC"),
])
def test_an_ipv6_only_host_refuses(bad, words, caplog):
    t = tracker()
    with caplog.at_level(logging.WARNING, logger="fastflannel.peers"):
        assert add(t, bad) == []
    assert t.leases() == [] and any(words in r.getMessage() for r in caplog.records), caplog.text


def test_one_vtep_mac_for_two_ipv6_only_hosts_is_a_conflict():
    """The MAC rules use BackendV6Data and PublicIPv6 (every PublicIP is 0.0.0.0)."""
    t = tracker()
    a = lease6("fc00:1:0:2::/64", "fd00:2::11", "0a:00:00:00:66:11")
    b = lease6("fc00:1:0:3::/64", "fd00:2::12", "0a:00:00:00:66:11")
    add(t, a, b)
    assert [x.key for x in t.leases()] == [a.key]
    assert "also announced by 0.0.0.0-0&fc00:1:0:2::-64 (fd00:2::11)" in t.rejected()[b.key]


def test_a_dual_stack_host_still_refuses_the_placeholder():
    """0.0.0.0/0 is the IPv6-only placeholder only in an IPv6-only network: elsewhere it covers
    the whole Network and is refused as before."""
    t = PeerTracker(N("10.10.0.0/20"), LeaseAttrs(A("192.0.2.10"), "vxlan", {"VNI": 1, "VtepMAC": "0a:00:00:00:00:10"},
                                                    A6("fd00:2::10"), {"VNI": 1, "VtepMAC": "0a:00:00:00:66:10"}), DUAL)
    bad = lease6("fc00:1:0:2::/64", "fd00:2::11")
    assert add(t, bad) == [] and "covers the whole network" in t.rejected()[bad.key]
