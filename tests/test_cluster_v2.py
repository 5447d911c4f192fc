"""End to end on the etcd v2 store (flanneld v0.6-v0.13's): the README's v2 walk-through run as
written, on three namespace hosts per backend with TCP across every pair, flannel v0.6-v0.13's lease
bytes in the v2 store and nothing in the v3 one; FLANNELD_ETCD_API; a renewal by the daemon.
The etcd is the lab's (etcd 3.4 in the hub namespace at 192.0.2.1:2379) with --enable-v2=true."""
from __future__ import annotations

import ipaddress
import itertools
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

from fastflannel.lab import tcp_transfer, wait_for
from fastflannel.lab.cluster import PREFIX, Cluster

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

README = Path(__file__).resolve().parent.parent / "README.md"
V2_SECTION = "### On the etcd v2 store"
SEED_BACKEND = '"Backend": {"Type": "vxlan", "VNI": 100, "Port": 8472}'
BACKENDS = {"vxlan": SEED_BACKEND, "udp": '"Backend": {"Type": "udp"}', "host-gw": '"Backend": {"Type": "host-gw"}'}


def _walkthrough() -> tuple[str, str]:
    """The README's v2 walk-through: (the etcdctl line, the fastflannel line)."""
    text = README.read_text()
    block = text[text.index(V2_SECTION):].split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    ctl = next(x for x in lines if x.startswith("ETCDCTL_API=2 etcdctl set "))
    daemon = next(x for x in lines if x.startswith("fastflannel "))
    assert SEED_BACKEND in ctl, ctl
    return ctl, daemon.split("#", 1)[0].strip()


class ReadmeCluster(Cluster):
    """Daemons started with the README's fastflannel line: each host's own address for -iface,
    and (this is a lab) the subnet file in the lab's directory."""

    def __init__(self, lab, daemon_line: str, hosts: Sequence[str] = ("h1", "h2", "h3")):
        self.daemon_words = shlex.split(daemon_line)
        assert self.daemon_words[0] == "fastflannel"
        super().__init__(lab, None, hosts=hosts)

    def daemon_argv(self, name: str, extra: Sequence[str] = ()) -> list[str]:
        ip = self.hosts[name].ip
        words = [f"-iface={ip}" if w.startswith("-iface=") else w for w in self.daemon_words[1:]]
        return [sys.executable, "-m", "fastflannel.agent.cli", *words, f"-subnet-file={self.subnet_file(name)}",
                *self.extra_flags, *extra]


def _v2_lab(lab, backend: str) -> str:
    """The lab's etcd with the v2 API; the README's etcdctl line run as written (only the
    endpoint comes from the environment), with the backend swapped in for udp and host-gw."""
    lab.start_etcd(["--enable-v2=true"])
    assert lab.etcd_endpoint == "http://192.0.2.1:2379"       # the README's address
    ctl, daemon = _walkthrough()
    line = ctl.replace(SEED_BACKEND, BACKENDS[backend])
    lab.sh(lab.hub, f"export ETCDCTL_ENDPOINTS={lab.etcd_endpoint}; {line}")
    return daemon


def _v2_leases(lab) -> dict[str, str]:
    """`<ip>-<len>` -> value of every lease in the v2 store, as `ETCDCTL_API=2 etcdctl` shows it."""
    keys = lab.etcdctl("ls", f"{PREFIX}/subnets", api="2").stdout.split()
    return {k.rsplit("/", 1)[1]: lab.etcdctl("get", k, api="2").stdout.rstrip("\n") for k in keys}


def _subnet(env) -> ipaddress.IPv4Network:
    return ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network


def _expected_value(lab, cluster, host: str, backend: str) -> str:
    ip = cluster.hosts[host].ip
    if backend == "udp":
        return f'{{"PublicIP":"{ip}"}}'
    if backend == "host-gw":
        return f'{{"PublicIP":"{ip}","BackendType":"host-gw"}}'
    link = json.loads(lab.sh(cluster.hosts[host].ns, "ip -j link show flannel.100").stdout)[0]
    return f'{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VtepMAC":"{link["address"]}"}}}}'


@pytest.mark.parametrize("backend", ["vxlan", "udp", "host-gw"])
def test_readme_walkthrough_on_the_v2_store_three_hosts(lab, backend):
    cluster = ReadmeCluster(lab, _v2_lab(lab, backend))
    cluster.start_all()
    envs = cluster.wait_all()
    subnets = {h: _subnet(e) for h, e in envs.items()}
    assert len(set(subnets.values())) == 3
    for h in cluster.hosts:
        assert "running on the etcd v2 store" in cluster.log(h), cluster.log(h)
    leases = _v2_leases(lab)
    assert set(leases) == {f"{s.network_address}-20" for s in subnets.values()}
    for h, s in subnets.items():
        assert leases[f"{s.network_address}-20"] == _expected_value(lab, cluster, h, backend)
    assert lab.etcdctl("get", "--prefix", "--keys-only", "/coreos.com").stdout == ""    # never v3
    cluster.add_containers()
    for a, b in itertools.permutations(cluster.hosts, 2):
        assert cluster.ping(a, b, timeout=15), f"{a} -> {b}\n{cluster.log(a)[-2000:]}"
        res = tcp_transfer(lab, cluster.containers[a].ns, cluster.containers[b].ns,
                           cluster.containers[b].ip, 1 << 20)
        assert res["ok"], (backend, a, b, res)
    # A peer's lease deleted in the v2 store removes its route everywhere.
    gone = subnets["h3"]
    cluster.stop("h3")
    lab.etcdctl("rm", f"{PREFIX}/subnets/{gone.network_address}-20", api="2")
    for h in ("h1", "h2"):
        ns = cluster.hosts[h].ns
        assert wait_for(lambda ns=ns: str(gone) not in lab.sh(ns, "ip route").stdout, 10), h


def test_flanneld_etcd_api_v2_from_the_environment(lab):
    daemon = _v2_lab(lab, "host-gw")
    cluster = ReadmeCluster(lab, daemon, hosts=("h1", "h2"))
    for h in cluster.hosts:
        cluster.start(h, env={"FLANNELD_ETCD_API": "v2"})
    envs = cluster.wait_all()
    for h in cluster.hosts:
        log = cluster.log(h)
        assert "(etcd v2 API)" in log and "running on the etcd v2 store" not in log, log
    assert len(_v2_leases(lab)) == 2
    cluster.add_containers()
    assert cluster.ping("h1", "h2") and cluster.ping("h2", "h1")
    assert {_subnet(e) for e in envs.values()} == {ipaddress.ip_network(k.replace("-", "/"))
                                                  for k in _v2_leases(lab)}


@pytest.mark.slow
def test_the_daemon_renews_its_v2_lease(lab):
    """-subnet-lease-renew-margin=1439 (minutes) puts the renewal one minute after the lease."""
    cluster = ReadmeCluster(lab, _v2_lab(lab, "host-gw"), hosts=("h1",))
    cluster.start("h1", extra=["-subnet-lease-renew-margin=1439"])
    key = f"{PREFIX}/subnets/{_subnet(cluster.wait_subnet('h1')).network_address}-20"

    def node():
        out = lab.etcdctl("-o", "extended", "get", key, api="2").stdout
        return int(re.search(r"Modified-Index: (\d+)", out).group(1)), int(re.search(r"TTL: (\d+)", out).group(1))
    first, ttl = node()
    assert 86390 <= ttl <= 86400
    t0 = time.monotonic()
    assert wait_for(lambda: node()[0] > first, 90, interval=1.0), cluster.log("h1")
    renewed_after = time.monotonic() - t0
    index, ttl = node()
    print(f"renewed {renewed_after:.1f} s after the check began (index {first} -> {index}, ttl {ttl})")
    assert 86390 <= ttl <= 86400 and "Renewed lease" in cluster.log("h1")
    assert cluster.daemons["h1"].poll() is None
