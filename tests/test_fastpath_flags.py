"""The daemon's fast-path switches: -fastpath-offload, -fastpath-disable, -fastpath-workers, and
how the udp backend turns them into Forwarder.open keywords and logs offload fallbacks."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from fastflannel.agent.backends.base import BackendError, BackendOptions
from fastflannel.agent.backends.udp import OFFLOAD_PARTS, UdpBackend
from fastflannel.agent.config import parse_config
from fastflannel.agent.flags import FlagError, Options, parse_flags


def test_disable_flag_default_and_values():
    assert Options().fastpath_disable == []
    o = parse_flags(["-fastpath-offload", "-fastpath-disable=udp-gso,tcp-gro", "-fastpath-workers=2"])
    assert (o.fastpath_offload, o.fastpath_disable, o.fastpath_workers) == (True, ["udp-gso", "tcp-gro"], 2)
    assert parse_flags([], {"FLANNELD_FASTPATH_DISABLE": "tun-tso,udp-gro"}).fastpath_disable == ["tun-tso", "udp-gro"]


@pytest.mark.parametrize("argv, msg", [
    (["-fastpath-disable=udp-gso,gro"], "-fastpath-disable: unknown offload part 'gro'"),
    (["-fastpath-workers=65"], "-fastpath-workers must be 1..64"),
])
def test_bad_fastpath_flags(argv, msg):
    with pytest.raises(FlagError, match=msg):
        parse_flags(argv)


def _backend(**kw) -> UdpBackend:
    cfg = parse_config('{"Network": "10.0.0.0/8", "Backend": {"Type": "udp"}}')
    return UdpBackend(SimpleNamespace(mtu=1500), cfg, BackendOptions(**kw))


def test_duplex_flag():
    assert Options().fastpath_duplex is False
    assert parse_flags(["-fastpath-duplex"]).fastpath_duplex is True
    assert parse_flags(["-fastpath-duplex=false"]).fastpath_duplex is False
    assert parse_flags([], {"FLANNELD_FASTPATH_DUPLEX": "true"}).fastpath_duplex is True


def test_backend_forwarder_options():
    assert _backend()._tier_options() == {}
    assert _backend(workers=2)._tier_options() == {"workers": 2}
    assert _backend(duplex=True, workers=2)._tier_options() == {"workers": 2, "duplex": True}
    assert _backend(offload=True, disable=["udp-gso", "tun-tso"])._tier_options() == {
        "offload": True, "udp_gso": False, "tun_tso": False}
    assert _backend(offload=False, disable=["udp-gso"])._tier_options() == {}
    with pytest.raises(BackendError):
        _backend(disable=["nope"])


class _FakeForwarder:
    def __init__(self, features):
        self.features = dict(features, workers=1)

    def stats(self):
        return {"offload_fallbacks": 1}


def test_backend_logs_each_fallback_once(caplog):
    b = _backend(offload=True, disable=["udp-gro"])
    b.fw = _FakeForwarder({p: p != "udp_gro" for p in OFFLOAD_PARTS})
    with caplog.at_level(logging.WARNING, logger="fastflannel.udp"):
        b._log_fallbacks()                 # everything asked for is on; udp-gro was disabled
        assert caplog.records == []
        b.fw.features["udp_gso"] = False   # EIO on a GSO send turned it off
        b._log_fallbacks()
        b._log_fallbacks()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "udp backend: fast-path offload udp-gso refused by the kernel"]
    assert "now off (offload_fallbacks=1)" in caplog.records[0].getMessage()


def test_flag_spellings_match_the_fast_path():
    # flags.py keeps its own copy so parsing flags never loads the C extension; it must not drift.
    from fastflannel import fastpath
    from fastflannel.agent import flags
    assert flags.OFFLOAD_PARTS == tuple(p.replace("_", "-") for p in fastpath.OFFLOAD_PARTS)
    assert flags.MAX_WORKERS == fastpath.MAX_WORKERS
