"""The IPv6 fields of the network config: flannel's defaults and messages (subnet/config.go
CheckNetworkConfig, v0.20.2), dual-stack and IPv6-only (docs/flannel-compat.md §"Dual-stack")."""
from __future__ import annotations

import json
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest

from fastflannel.agent.config import ConfigError, NetworkConfig, parse_config


def cfg(**kw) -> NetworkConfig:
    return parse_config(json.dumps(kw))


def err(**kw) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(json.dumps(kw))
    return str(ei.value)


DUAL = {"Network": "10.5.0.0/16", "EnableIPv6": True}


def test_dual_stack_defaults_for_a_slash_48():
    c = cfg(**DUAL, IPv6Network="fc00::/48")
    assert (c.enable_ipv4, c.enable_ipv6) == (True, True)
    assert c.ipv6_network == N6("fc00::/48") and c.ipv6_subnet_len == 64
    # the first subnet is skipped; the last one is Next() - size
    assert c.ipv6_subnet_min == A6("fc00:0:0:1::")
    assert c.ipv6_subnet_max == A6("fc00:0:0:ffff::")
    assert (c.network, c.subnet_len) == (N("10.5.0.0/16"), 24)


@pytest.mark.parametrize("prefix, length", [(8, 64), (62, 64), (63, 65), (100, 102), (124, 126)])
def test_default_ipv6_subnet_len(prefix, length):
    assert cfg(**DUAL, IPv6Network=f"fc00::/{prefix}").ipv6_subnet_len == length


def test_ipv6_network_is_masked_like_parsecidr():
    assert cfg(**DUAL, IPv6Network="fc00::1234/48").ipv6_network == N6("fc00::/48")


@pytest.mark.parametrize("kw, message", [
    ({}, "please define a correct IPv6Network parameter in the flannel config"),
    ({"IPv6Network": "::/0"}, "please define a correct IPv6Network parameter in the flannel config"),
    ({"IPv6Network": "fc00::/125"}, "IPv6Network is too small. Minimum useful network prefix is /124"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetLen": 127}, "SubnetLen must be less than /127"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetLen": 49},
     "network must be able to accommodate at least four subnets"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc01::"},
     "IPv6SubnetMin is not in the range of the IPv6Network"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetMax": "fd00::"},
     "IPv6SubnetMax is not in the range of the IPv6Network"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::1"},
     "IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetMax": "fc00:0:0:5:8000::"},
     "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:5:8000::"),
])
def test_flannels_ipv6_messages(kw, message):
    assert err(**DUAL, **kw) == message


def test_given_range_is_kept():
    c = cfg(**DUAL, IPv6Network="fc00::/48", IPv6SubnetMin="fc00:0:0:10::", IPv6SubnetMax="fc00:0:0:20::")
    assert (c.ipv6_subnet_min, c.ipv6_subnet_max) == (A6("fc00:0:0:10::"), A6("fc00:0:0:20::"))
    assert c.ipv6_subnet_compatible(N6("fc00:0:0:10::/64"))
    assert c.ipv6_subnet_compatible(N6("fc00:0:0:20::/64"))
    assert not c.ipv6_subnet_compatible(N6("fc00:0:0:21::/64"))        # past IPv6SubnetMax
    assert not c.ipv6_subnet_compatible(N6("fc00:0:0:10::/80"))        # another length
    assert not c.ipv6_subnet_compatible(None)                          # a v4-only lease


def test_without_enable_ipv6_a_lease_must_have_no_ipv6_subnet():
    """flannel's isIPv6SubnetConfigCompat: a dual-stack lease does not fit a v4-only config."""
    c = cfg(Network="10.5.0.0/16", IPv6Network="fc00::/48")
    assert not c.enable_ipv6 and c.ipv6_network is None
    assert c.ipv6_subnet_compatible(None)
    assert not c.ipv6_subnet_compatible(N6("fc00:0:0:1::/64"))
    assert c.lease_compatible(N("10.5.1.0/24"), None)
    assert not c.lease_compatible(N("10.5.1.0/24"), N6("fc00:0:0:1::/64"))


def test_ipv4_is_checked_first():
    assert err(EnableIPv6=True) == "please define a correct Network parameter in the flannel config"


def test_bad_ipv6_values_are_decode_errors_even_when_disabled():
    """Go's decoder fills every field before any check, EnableIPv6 or not."""
    assert "IPv6Network" in err(Network="10.5.0.0/16", IPv6Network="fc00::/200")
    assert "IPv6Network" in err(Network="10.5.0.0/16", IPv6Network=5)
    assert "IPv6SubnetMin" in err(Network="10.5.0.0/16", IPv6SubnetMin="zz::")
    assert "IPv6SubnetLen" in err(Network="10.5.0.0/16", IPv6SubnetLen=-1)


@pytest.mark.parametrize("value", ["10.0.0.0/8", "fc00::", "fc00::/x", "fc00::/-1"])
def test_ipv6_network_text_is_ipv6_cidr_only(value):
    assert "IPv6Network" in err(**DUAL, IPv6Network=value)


def test_ipv6_only():
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fd42::/56", Backend={"Type": "vxlan"})
    assert (c.enable_ipv4, c.enable_ipv6) == (False, True)
    assert c.ipv6_subnet_len == 64 and c.ipv6_subnet_min == A6("fd42:0:0:1::")
    # flannel leaves the IPv4 fields at their zero values, unchecked
    assert (c.network, c.subnet_len, c.subnet_min, c.subnet_max) == (N("0.0.0.0/0"), 0, A(0), A(0))


def test_null_ipv6_fields_leave_the_defaults():
    c = cfg(**DUAL, IPv6Network="fc00::/48", IPv6SubnetLen=None, IPv6SubnetMin=None)
    assert c.ipv6_subnet_len == 64 and c.ipv6_subnet_min == A6("fc00:0:0:1::")
    assert cfg(**DUAL, IPv6Network="fc00::/48", IPv6SubnetMin="::").ipv6_subnet_min == A6("fc00:0:0:1::")


def test_keys_match_case_insensitively():
    c = parse_config('{"network":"10.5.0.0/16","enableipv6":true,"ipv6network":"fc00::/48","IPV6SUBNETLEN":80}')
    assert c.enable_ipv6 and c.ipv6_subnet_len == 80
