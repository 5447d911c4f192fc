"""The backend registry and what backends decide without touching the kernel: one constructor
signature for every type, lazy imports, options and refusals. Kernel state: test_backends_kernel.py."""
from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys

import pytest

from fastflannel.agent.backends import BACKENDS, new_backend, register
from fastflannel.agent.backends.base import BackendOptions
from fastflannel.agent.config import ConfigError, NetworkConfig, parse_config
from fastflannel.agent.errors import BackendError
from fastflannel.agent.iface import ExternalInterface
from fastflannel.agent.lease import Lease, LeaseAttrs

A = ipaddress.IPv4Address


def _cfg(btype: str, **backend) -> NetworkConfig:
    return parse_config(json.dumps({"Network": "10.0.0.0/8", "Backend": {"Type": btype, **backend}}))


def _ext(mtu: int = 1500, ip: str = "10.1.1.1", public: str | None = None) -> ExternalInterface:
    return ExternalInterface("eth0", 2, mtu, A(ip), A(public or ip))


def test_registry_names_are_the_config_types():
    assert sorted(BACKENDS) == ["host-gw", "udp", "vxlan"]
    for name in BACKENDS:
        assert _cfg(name).backend_type == name
    with pytest.raises(ConfigError, match="unknown backend type: ipip"):
        _cfg("ipip")


def test_unknown_type_at_construction_is_a_backend_error():
    cfg = NetworkConfig(ipaddress.IPv4Network("10.0.0.0/8"), 24, A("10.0.1.0"), A("10.255.255.0"), "ipip")
    with pytest.raises(BackendError, match="unknown backend type: ipip"):
        new_backend(_ext(), cfg, BackendOptions())


def test_register_adds_a_type_with_the_one_signature():
    seen = []

    def ctor(ext, cfg, opts):
        seen.append((ext.name, cfg.backend_type, opts.state_dir))
        return BACKENDS["host-gw"](ext, cfg, opts)
    register("test-gw", ctor)
    try:
        cfg = _cfg("test-gw")              # the config accepts exactly the registered types
        be = new_backend(_ext(), cfg, BackendOptions(state_dir="/nonexistent/state"))
    finally:
        del BACKENDS["test-gw"]
    assert seen == [("eth0", "test-gw", "/nonexistent/state")] and be.name == "host-gw"
    with pytest.raises(ConfigError, match="unknown backend type: test-gw"):
        _cfg("test-gw")


def test_only_the_chosen_backend_is_imported():
    # A fresh interpreter: a host-gw daemon never loads the C fast path or numpy; udp loads the
    # fast path but not numpy (its routes cross the boundary packed, docs/fastpath.md
    # §"The agent's boundary").
    code = (
        "import json, sys\n"
        "import fastflannel.agent.cli, fastflannel.agent.daemon\n"
        "from fastflannel.agent.backends import new_backend\n"
        "from fastflannel.agent.backends.base import BackendOptions\n"
        "from fastflannel.agent.config import parse_config\n"
        "from fastflannel.agent.iface import ExternalInterface\n"
        "from ipaddress import IPv4Address as A\n"
        "ext = ExternalInterface('eth0', 2, 1500, A('10.1.1.1'), A('10.1.1.1'))\n"
        "cfg = lambda t: parse_config(json.dumps({'Network': '10.0.0.0/8', 'Backend': {'Type': t}}))\n"
        "heavy = lambda: sorted(m for m in ('numpy', 'fastflannel.fastpath') if m in sys.modules)\n"
        "new_backend(ext, cfg('host-gw'), BackendOptions())\n"
        "before = heavy()\n"
        "new_backend(ext, cfg('udp'), BackendOptions())\n"
        "print(json.dumps([before, heavy()]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[], ["fastflannel.fastpath"]]


def test_hostgw_refuses_nat():
    msg = "host-gw requires the public IP to be the interface's address (NAT?)"
    with pytest.raises(BackendError, match=re.escape(msg)):
        new_backend(_ext(ip="192.168.1.5", public="203.0.113.9"), _cfg("host-gw"), BackendOptions())


def test_vxlan_mtu_and_lease_attrs_without_kernel(tmp_path):
    (tmp_path / "vxlan-1-10.1.1.1.mac").write_text("0e:00:00:00:00:01\n")
    opts = BackendOptions(state_dir=str(tmp_path))
    be = new_backend(_ext(mtu=9001), _cfg("vxlan"), opts)
    assert be.name == "vxlan" and be.mtu() == 8951 and be.stats() == {}
    assert be.lease_attrs().to_json() == (b'{"PublicIP":"10.1.1.1","PublicIPv6":null,"BackendType":"vxlan",'
                                          b'"BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}}')
    assert new_backend(_ext(mtu=9001), _cfg("vxlan", MTU=1500), opts).mtu() == 1450
    with pytest.raises(BackendError):
        new_backend(_ext(), _cfg("vxlan", VNI="x"), opts)
    gw = new_backend(_ext(mtu=9001), _cfg("host-gw"), opts)
    assert gw.mtu() == 9001 and gw.lease_attrs() == LeaseAttrs(A("10.1.1.1"), "host-gw", None)


def test_udp_takes_its_port_from_the_config_and_its_switches_from_the_options():
    be = new_backend(_ext(), _cfg("udp", Port=8300), BackendOptions(batch=8, workers=2, anti_spoof=False))
    assert be.mtu() == 1472 and be.lease_attrs() == LeaseAttrs(A("10.1.1.1"))
    assert (be.port, be.batch, be.workers, be.anti_spoof) == (8300, 8, 2, False)    # type: ignore[attr-defined]
    with pytest.raises(BackendError, match="Port 70000 out of range"):
        new_backend(_ext(), _cfg("udp", Port=70000), BackendOptions())


def test_udp_peers_before_setup_are_a_backend_error():
    be = new_backend(_ext(), _cfg("udp"), BackendOptions())
    peer = Lease(ipaddress.IPv4Network("10.10.16.0/20"), LeaseAttrs(A("10.1.1.2")))
    with pytest.raises(BackendError, match="fast path is not open"):
        be.add_peer(peer)
    with pytest.raises(BackendError, match="fast path is not open"):
        be.sync_peers([peer])
