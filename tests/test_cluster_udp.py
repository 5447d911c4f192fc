"""End to end: namespace hosts running the fastflannel daemon (udp backend) against a real etcd."""
from __future__ import annotations

import ast
import ipaddress
import itertools
import json
import os
import signal
import time

import pytest

from fastflannel.lab import tcp_transfer, wait_for
from fastflannel.lab.cluster import PREFIX, Cluster, seed_config

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

SEED_CONFIG_UDP = seed_config("udp")


def _subnet(env) -> ipaddress.IPv4Network:
    return ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network


def test_three_hosts_exchange_tcp_across_every_pair(lab):
    cluster = Cluster(lab, SEED_CONFIG_UDP)
    cluster.start_all()
    envs = cluster.wait_all()
    subnets = {h: _subnet(e) for h, e in envs.items()}
    assert len(set(subnets.values())) == 3
    for h, env in envs.items():
        assert env["FLANNEL_NETWORK"] == "10.0.0.0/8"
        assert env["FLANNEL_MTU"] == "1472"            # eth0 1500 - 28
        assert env["FLANNEL_IPMASQ"] == "false"
        s = subnets[h]
        assert s.prefixlen == 20 and ipaddress.ip_address("10.10.0.0") <= s.network_address \
            <= ipaddress.ip_address("10.99.0.0")
        # flannel's exact file: four lines in this order.
        text = open(cluster.subnet_file(h)).read()
        assert text == (f"FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET={s.network_address + 1}/20\n"
                        f"FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    # The lease values are flannel's udp JSON, byte for byte.
    leases = cluster.leases()
    for h, s in subnets.items():
        key = f"{s.network_address}-{s.prefixlen}"
        assert leases[key] == f'{{"PublicIP":"{cluster.hosts[h].ip}","PublicIPv6":null}}'
    cluster.add_containers()
    for a, b in itertools.permutations(cluster.hosts, 2):
        assert cluster.ping(a, b, timeout=15), f"{a} -> {b} ping failed\n{cluster.log(a)[-2000:]}"
        res = tcp_transfer(lab, cluster.containers[a].ns, cluster.containers[b].ns,
                           cluster.containers[b].ip, 2 << 20)
        assert res["ok"], (a, b, res)


def test_restart_keeps_subnet_with_and_without_subnet_file(lab):
    cluster = Cluster(lab, SEED_CONFIG_UDP, hosts=("h1", "h2"))
    cluster.start_all()
    first = _subnet(cluster.wait_all()["h1"])
    t0 = time.monotonic()
    assert cluster.stop("h1") == 0
    assert time.monotonic() - t0 < 3.0, "SIGTERM must end the daemon within a couple of seconds"
    # flannel leaves its lease in etcd on exit.
    assert f"{first.network_address}-20" in cluster.leases()
    cluster.start("h1")
    assert _subnet(cluster.wait_subnet("h1")) == first
    cluster.stop("h1")
    os.unlink(cluster.subnet_file("h1"))
    cluster.start("h1")
    assert _subnet(cluster.wait_subnet("h1")) == first      # reuse by PublicIP
    cluster.add_containers()
    assert cluster.ping("h2", "h1")


def test_sigkill_and_restart_recovers_traffic(lab):
    cluster = Cluster(lab, SEED_CONFIG_UDP, hosts=("h1", "h2"))
    cluster.start_all()
    cluster.wait_all()
    cluster.add_containers()
    assert cluster.ping("h1", "h2")
    cluster.stop("h2", sig=signal.SIGKILL)
    # The TUN dies with the process; traffic stops until the daemon is back.
    assert not cluster.ping("h1", "h2", timeout=1.5)
    os.unlink(cluster.subnet_file("h2"))
    cluster.start("h2")
    cluster.wait_subnet("h2")
    assert cluster.ping("h1", "h2", timeout=15)
    assert cluster.ping("h2", "h1", timeout=15)


def test_twenty_daemons_started_at_once_hold_distinct_subnets(lab):
    # A range of 24 subnets for 20 hosts makes allocation races likely; every loser must retry.
    cfg = json.dumps({"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0",
                      "SubnetMax": "10.11.112.0", "Backend": {"Type": "udp"}})
    hosts = [f"n{i}" for i in range(20)]
    cluster = Cluster(lab, cfg, hosts=hosts)
    cluster.start_all()
    envs = cluster.wait_all(timeout=120)
    subnets = [_subnet(e) for e in envs.values()]
    assert len(set(subnets)) == 20, subnets
    assert len(cluster.leases()) == 20


def test_deleted_peer_lease_removes_its_route(lab):
    cluster = Cluster(lab, SEED_CONFIG_UDP, hosts=("h1", "h2"))
    cluster.start_all()
    envs = cluster.wait_all()
    cluster.add_containers()
    assert cluster.ping("h1", "h2")
    # Stop h2 first (its lease stays, as in flannel), then the admin deletes the lease.
    cluster.stop("h2")
    s2 = _subnet(envs["h2"])
    lab.etcdctl("del", f"{PREFIX}/subnets/{s2.network_address}-20")
    c1, c2 = cluster.containers["h1"], cluster.containers["h2"]
    # With the route gone, h1's fast path answers a TCP SYN with ICMP net-unreachable (as flannel
    # does; never for ICMP itself, so no ping here): connect() fails at once with ENETUNREACH.
    probe = (f"python3 -c \"import socket; s=socket.socket(); s.settimeout(2)\n"
             f"try: s.connect(('{c2.ip}', 80))\nexcept OSError as e: print(e.errno)\"")
    assert wait_for(lambda: lab.sh(c1.ns, probe, check=False).stdout.strip() == "101", 10)


def test_bad_config_is_one_clear_line(lab):
    cluster = Cluster(lab, '{"Network": "10.0.0.0/8", "SubnetLen": 31}', hosts=("h1",))
    p = cluster.start("h1")
    assert p.wait(20) == 1
    log = cluster.log("h1")
    assert "SubnetLen must be less than /31" in log
    assert "Traceback" not in log


def _http_get(lab, ns, url):
    code = (f"import urllib.request as u, urllib.error as e\n"
            f"try: r = u.urlopen('{url}', timeout=3); print(r.status, repr(r.read().decode()))\n"
            f"except e.HTTPError as x: print(x.code, repr(x.read().decode()))")
    return lab.sh(ns, f"python3 -c \"{code}\"").stdout.strip()


def test_missing_config_waits_with_v3_hint_then_proceeds(lab):
    cluster = Cluster(lab, None, hosts=("h1",))
    p = cluster.start("h1", extra=["-healthz-ip=127.0.0.1", "-healthz-port=8471"])
    assert wait_for(lambda: "Did you create your config using etcdv3 API?" in cluster.log("h1"), 15)
    assert p.poll() is None
    ns = cluster.hosts["h1"].ns
    assert _http_get(lab, ns, "http://127.0.0.1:8471/readyz") == "503 'flanneld is not ready yet'"
    assert _http_get(lab, ns, "http://127.0.0.1:8471/healthz") == "200 'flanneld is running'"
    cluster.put_config(SEED_CONFIG_UDP)
    env = cluster.wait_subnet("h1", timeout=15)
    assert env["FLANNEL_NETWORK"] == "10.0.0.0/8"
    assert _http_get(lab, ns, "http://127.0.0.1:8471/readyz") == "200 'flanneld is ready'"
    # fastflannel's /stats: the fast path's counters, live.
    code, body = _http_get(lab, ns, "http://127.0.0.1:8471/stats").split(" ", 1)
    stats = json.loads(ast.literal_eval(body))  # the helper prints repr() of the body
    assert code == "200" and {"udp_rx_packets", "no_route", "spoofed"} <= set(stats), stats


def test_config_only_in_v2_store_prints_the_v3_command_when_v3_is_forced(lab):
    # By default the daemon runs on the v2 store then (tests/test_cluster_v2.py).
    lab.start_etcd(["--enable-v2"])
    lab.etcdctl("set", f"{PREFIX}/config", SEED_CONFIG_UDP, api="2")
    cluster = Cluster(lab, None, hosts=("h1",))
    p = cluster.start("h1", extra=["-etcd-api=v3"])
    want = f"ETCDCTL_API=3 etcdctl put {PREFIX}/config '{SEED_CONFIG_UDP}'"
    assert wait_for(lambda: want in cluster.log("h1"), 15), cluster.log("h1")
    assert "only in the etcd v2 store" in cluster.log("h1")
    assert p.poll() is None


def test_unreachable_etcd_is_one_clear_line(lab):
    cluster = Cluster(lab, SEED_CONFIG_UDP, hosts=("h1",))
    # Port 1 on the hub: inside our namespace, closed, so the connection is refused at once.
    p = cluster.start("h1", extra=["-etcd-endpoints=http://192.0.2.1:1"])
    assert wait_for(lambda: "192.0.2.1:1" in cluster.log("h1"), 20), cluster.log("h1")
    assert p.poll() is None, "the daemon keeps retrying like flanneld"
    assert cluster.stop("h1") == 0
    log = cluster.log("h1")
    assert "Traceback" not in log
    assert "cannot reach etcd" in log


def test_bad_flag_is_one_clear_line(lab):
    cluster = Cluster(lab, SEED_CONFIG_UDP, hosts=("h1",))
    p = cluster.start("h1", extra=["-no-such-flag=1"])
    assert p.wait(20) == 2
    log = cluster.log("h1").strip().splitlines()
    assert log == ["fastflannel: flag provided but not defined: -no-such-flag"], log


def test_own_lease_deleted_is_taken_back_and_stolen_lease_is_never_overwritten(lab):
    cluster = Cluster(lab, SEED_CONFIG_UDP, hosts=("h1",))
    p = cluster.start("h1")
    s = _subnet(cluster.wait_subnet("h1"))
    key = f"{PREFIX}/subnets/{s.network_address}-20"
    mine = '{"PublicIP":"192.0.2.10","PublicIPv6":null}'
    lab.etcdctl("del", key)
    # Free again: the daemon takes the same subnet back (flannel shuts down instead).
    assert wait_for(lambda: cluster.leases().get(key.rsplit("/", 1)[1]) == mine, 15), cluster.log("h1")
    assert p.poll() is None
    # Another host now holds our subnet: we must not overwrite it, and we exit with a clear error.
    lab.etcdctl("del", key)
    lab.etcdctl("put", key, '{"PublicIP":"192.0.2.99","PublicIPv6":null}')
    assert p.wait(20) == 1
    assert cluster.leases()[key.rsplit("/", 1)[1]] == '{"PublicIP":"192.0.2.99","PublicIPv6":null}'
    log = cluster.log("h1")
    assert "192.0.2.99" in log and "Traceback" not in log


def test_offload_host_and_plain_host_interoperate(lab):
    # Offloads never change the wire: one inner packet per datagram, so a plain peer (or flannel)
    # still talks to an offloading, multi-queue one.
    cluster = Cluster(lab, SEED_CONFIG_UDP, hosts=("h1", "h2"))
    cluster.start("h1", extra=["-fastpath-offload=false"])
    cluster.start("h2", extra=["-fastpath-workers=2"])
    cluster.wait_all()
    cluster.add_containers()
    for a, b in (("h1", "h2"), ("h2", "h1")):
        assert cluster.ping(a, b), cluster.log(a)[-2000:]
        res = tcp_transfer(lab, cluster.containers[a].ns, cluster.containers[b].ns,
                           cluster.containers[b].ip, 8 << 20)
        assert res["ok"], (a, b, res)
