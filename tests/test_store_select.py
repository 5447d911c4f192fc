"""Which etcd store the daemon runs on (-etcd-api, agent/store_select.py), against a real etcd 3.4
with --enable-v2=true: auto in all four cases (v3 only, v2 only, both, neither), the forced modes,
never a write to both stores, the daemon's messages while no config exists, and a daemon on the v2
store that never loads grpc."""
from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
import sys
import threading
import time

import pytest

from fastflannel.agent.daemon import Daemon
from fastflannel.agent.errors import EtcdUnreachable, RegistryError
from fastflannel.agent.etcd_options import EtcdOptions
from fastflannel.agent.flags import parse_flags
from fastflannel.agent.lease import LeaseAttrs
from fastflannel.agent.store_select import StoreSelector
from fastflannel.lab.cluster import seed_config
from fastflannel.lab.etcd import etcdctl
from support.v2store import PREFIX, V2Etcd, v2_node

pytestmark = pytest.mark.etcd

CFG = f"{PREFIX}/config"
CFG_V3 = seed_config("vxlan")
CFG_V2 = seed_config("udp")
NET = ipaddress.IPv4Network("10.10.16.0/20")
UDP = LeaseAttrs(ipaddress.IPv4Address("192.0.2.10"))
DAY_S = 86400


@pytest.fixture
def etcd(etcd_required):
    e = V2Etcd()
    e.start()
    yield e
    e.remove()


@pytest.fixture
def selector():
    made: list[StoreSelector] = []

    def make(url: str, api: str = "auto") -> StoreSelector:
        s = StoreSelector(EtcdOptions(endpoints=[url], timeout_s=3), api)
        made.append(s)
        s.connect()
        return s
    yield make
    for s in made:
        s.close()


def _v3_keys(e: V2Etcd) -> list[str]:
    return e.etcdctl("get", "--prefix", "--keys-only", "/coreos.com").stdout.split()


def _lease_stores(e: V2Etcd) -> tuple[bool, bool]:
    """(the lease is in the v3 store, the lease is in the v2 store)."""
    key = f"{PREFIX}/subnets/10.10.16.0-20"
    return key in _v3_keys(e), v2_node(e.url, key) is not None


def test_auto_v3_only(etcd, selector):
    etcd.etcdctl("put", CFG, CFG_V3)
    s = selector(etcd.url)
    assert s.get_network_config() == CFG_V3 and s.chosen == "v3"
    s.create_lease(NET, UDP, DAY_S)
    assert _lease_stores(etcd) == (True, False)


def test_auto_v2_only_says_so_once(etcd, selector, caplog):
    etcd.ctl2("set", CFG, CFG_V2)
    s = selector(etcd.url)
    with caplog.at_level(logging.INFO, logger="fastflannel.registry"):
        assert s.get_network_config() == CFG_V2 and s.chosen == "v2"
        assert s.get_network_config() == CFG_V2
    said = [r.getMessage() for r in caplog.records if "only in the etcd v2 store" in r.getMessage()]
    assert len(said) == 1 and "running on the etcd v2 store" in said[0], caplog.text
    s.create_lease(NET, UDP, DAY_S)
    assert _lease_stores(etcd) == (False, True)
    assert s.list_leases()[0][0].subnet == NET


def test_auto_both_the_v3_config_wins(etcd, selector, caplog):
    etcd.etcdctl("put", CFG, CFG_V3)
    etcd.ctl2("set", CFG, CFG_V2)
    s = selector(etcd.url)
    with caplog.at_level(logging.WARNING, logger="fastflannel.registry"):
        assert s.get_network_config() == CFG_V3 and s.chosen == "v3"
    assert any("in both the etcd v3 and the v2 store" in r.getMessage() for r in caplog.records)
    s.create_lease(NET, UDP, DAY_S)
    s.update_lease(NET, UDP, DAY_S)
    assert _lease_stores(etcd) == (True, False)


def test_auto_neither_probes_both_on_every_read(etcd, selector):
    s = selector(etcd.url)
    assert s.get_network_config() is None and s.chosen is None
    with pytest.raises(RegistryError, match="no etcd store chosen"):
        s.create_lease(NET, UDP, DAY_S)                 # nothing is written before the choice
    assert s.get_network_config() is None
    etcd.ctl2("set", CFG, CFG_V2)
    assert s.get_network_config() == CFG_V2 and s.chosen == "v2"
    etcd.etcdctl("put", CFG, CFG_V3)                     # too late: the choice is made once
    assert s.get_network_config() == CFG_V2
    s2 = selector(etcd.url)
    assert s2.get_network_config() == CFG_V3 and s2.chosen == "v3"      # a new daemon: v3 wins


def test_forced_stores_look_only_at_their_own(etcd, selector):
    etcd.ctl2("set", CFG, CFG_V2)
    v3 = selector(etcd.url, "v3")
    assert v3.get_network_config() is None and v3.config_from_v2_store() == CFG_V2
    etcd.etcdctl("put", CFG, CFG_V3)
    etcd.ctl2("rm", CFG)
    v2 = selector(etcd.url, "v2")
    assert v2.get_network_config() is None
    assert v3.get_network_config() == CFG_V3
    v3.create_lease(NET, UDP, DAY_S)
    assert _lease_stores(etcd) == (True, False)


def test_auto_on_an_etcd_without_the_v2_api(etcd_server, selector):
    s = selector(etcd_server)
    assert s.get_network_config() is None
    assert etcdctl(etcd_server, "put", CFG, CFG_V3).returncode == 0
    assert s.get_network_config() == CFG_V3 and s.chosen == "v3"
    with pytest.raises(EtcdUnreachable, match="does not serve the etcd v2 API"):
        StoreSelector(EtcdOptions(endpoints=[etcd_server], timeout_s=3), "v2").connect()


# ---- the daemon while no config exists -------------------------------------------------------

def _config_messages(url: str, api: str, caplog) -> list[str]:
    """The lines a daemon with -etcd-api=<api> logs while it waits for a config."""
    d = Daemon(parse_flags([f"-etcd-endpoints={url}", f"-etcd-api={api}"]))
    with caplog.at_level(logging.ERROR, logger="fastflannel"):
        t = threading.Thread(target=lambda: d._get_config(d._connect()), daemon=True)
        t.start()
        time.sleep(2.5)                                  # two retries: said once
        d.stop.set()
        t.join(5)
        d.registry.close()
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_daemon_messages_while_no_config_exists(etcd, caplog):
    auto = _config_messages(etcd.url, "auto", caplog)
    assert len(auto) == 2, auto
    assert auto[0].endswith("Did you create your config using etcdv3 API?")
    assert "not in the etcd v2 store either" in auto[1] and "--enable-v2" in auto[1]
    caplog.clear()
    etcd.ctl2("set", CFG, CFG_V2)
    v3 = _config_messages(etcd.url, "v3", caplog)
    assert "-etcd-api=v3 ignores" in v3[1] and f"ETCDCTL_API=3 etcdctl put {CFG} '{CFG_V2}'" in v3[1], v3
    caplog.clear()
    etcd.ctl2("rm", CFG)
    v2 = _config_messages(etcd.url, "v2", caplog)
    assert len(v2) == 1 and f"ETCDCTL_API=2 etcdctl set {CFG}" in v2[0], v2


def test_a_daemon_on_the_v2_store_never_loads_grpc(etcd):
    etcd.ctl2("set", CFG, CFG_V2)
    prog = f"""
import ipaddress, json, sys
from fastflannel.agent.daemon import Daemon
from fastflannel.agent.flags import parse_flags
from fastflannel.agent.lease import LeaseAttrs
d = Daemon(parse_flags(["-etcd-endpoints={etcd.url}", "-etcd-api=v2"]))
reg = d._connect()
cfg = d._get_config(reg)
reg.create_lease(ipaddress.IPv4Network("10.10.16.0/20"), LeaseAttrs(ipaddress.IPv4Address("192.0.2.10")), 60)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "etcd3", "google"))
print(json.dumps({{"backend": cfg.backend_type, "leases": len(reg.list_leases()[0]), "heavy": heavy}}))
"""
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.splitlines()[-1])
    assert out == {"backend": "udp", "leases": 1, "heavy": []}, out
