"""Network config parsing: flannel's defaults, key matching and every validation message
(docs/flannel-compat.md §"Config JSON and defaults")."""
from __future__ import annotations

import dataclasses
import ipaddress
import json
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastflannel.agent.config import ConfigError, NetworkConfig, parse_config, stack_problem


def cfg(**kw) -> NetworkConfig:
    return parse_config(json.dumps(kw))


def err(raw) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(raw if isinstance(raw, (str, bytes)) else json.dumps(raw))
    return str(ei.value)


# -- defaults ---------------------------------------------------------------------------------------

def test_documented_example():
    c = parse_config('{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0",'
                     '"SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}')
    assert c.network == N("10.0.0.0/8")
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (20, A("10.10.0.0"), A("10.99.0.0"))
    assert c.backend_type == "udp"
    assert c.backend_option("Port", 8285) == 7890
    assert c.subnet_size == 4096


def test_defaults_for_a_slash_16():
    c = cfg(Network="10.5.0.0/16")
    assert c.subnet_len == 24
    assert c.subnet_min == A("10.5.1.0")          # the first subnet is skipped
    assert c.subnet_max == A("10.5.255.0")
    assert c.backend_type == "udp" and c.backend == {}
    assert c.subnet_count == 255


@pytest.mark.parametrize("prefix,expected", [(8, 24), (16, 24), (22, 24), (23, 25), (26, 28), (28, 30)])
def test_default_subnet_len(prefix, expected):
    c = cfg(Network=f"10.0.0.0/{prefix}")
    assert c.subnet_len == expected
    size = 1 << (32 - expected)
    assert int(c.subnet_min) == int(c.network.network_address) + size
    assert int(c.subnet_max) == int(c.network.broadcast_address) + 1 - size


def test_network_host_bits_are_masked_like_parsecidr():
    assert cfg(Network="10.5.7.9/16").network == N("10.5.0.0/16")


def test_zero_subnet_min_max_mean_default():
    c = cfg(Network="10.5.0.0/16", SubnetMin="0.0.0.0", SubnetMax="0.0.0.0", SubnetLen=0)
    assert (c.subnet_min, c.subnet_max, c.subnet_len) == (A("10.5.1.0"), A("10.5.255.0"), 24)


def test_nulls_keep_defaults():
    c = parse_config('{"Network":"10.5.0.0/16","SubnetLen":null,"SubnetMin":null,"EnableIPv4":null}')
    assert c.subnet_len == 24 and c.subnet_min == A("10.5.1.0")


def test_raw_and_bytes():
    raw = b'{"Network":"10.5.0.0/16"}'
    assert parse_config(raw).raw == raw.decode()


# -- key matching -----------------------------------------------------------------------------------

def test_keys_are_case_insensitive():
    c = parse_config('{"network":"10.6.0.0/16","SUBNETLEN":26,"subnetmin":"10.6.0.64",'
                     '"backend":{"type":"VXLAN","vni":7}}')
    assert c.network == N("10.6.0.0/16") and c.subnet_len == 26 and c.subnet_min == A("10.6.0.64")
    assert c.backend_type == "vxlan"
    assert c.backend_option("VNI", 1) == 7


def test_exact_key_wins_over_case_insensitive():
    c = parse_config('{"network":"10.7.0.0/16","Network":"10.6.0.0/16"}')
    assert c.network == N("10.6.0.0/16")
    c = parse_config('{"Network":"10.6.0.0/16","Backend":{"Type":"vxlan","vni":2,"VNI":3}}')
    assert c.backend_option("VNI") == 3


def test_unknown_keys_ignored():
    c = cfg(Network="10.5.0.0/16", Foo=1, EnableNFTables=False, IPv6Network="fc00::/48")
    assert c.network == N("10.5.0.0/16")


def test_backend_option_default_and_null():
    c = cfg(Network="10.5.0.0/16", Backend={"Type": "vxlan", "Port": None})
    assert c.backend_option("Port", 0) == 0
    assert c.backend_option("DirectRouting", False) is False


@pytest.mark.parametrize("btype", ["udp", "vxlan", "host-gw", "UDP", "Host-GW"])
def test_known_backends(btype):
    assert cfg(Network="10.5.0.0/16", Backend={"Type": btype}).backend_type == btype.lower()


def test_subnet_compatible():
    c = cfg(Network="10.5.0.0/16", SubnetMin="10.5.10.0", SubnetMax="10.5.20.0")
    assert c.subnet_compatible(N("10.5.10.0/24")) and c.subnet_compatible(N("10.5.20.0/24"))
    assert not c.subnet_compatible(N("10.5.9.0/24"))
    assert not c.subnet_compatible(N("10.5.21.0/24"))
    assert not c.subnet_compatible(N("10.5.12.0/25"))


# -- every message ----------------------------------------------------------------------------------

@pytest.mark.parametrize("doc,message", [
    ({}, "please define a correct Network parameter in the flannel config"),
    ({"Network": "0.0.0.0/0"}, "please define a correct Network parameter in the flannel config"),
    ({"Network": "10.0.0.0/8", "SubnetLen": 31}, "SubnetLen must be less than /31"),
    ({"Network": "10.0.0.0/8", "SubnetLen": 40}, "SubnetLen must be less than /31"),
    ({"Network": "10.0.0.0/24", "SubnetLen": 25}, "network must be able to accommodate at least four subnets"),
    ({"Network": "10.0.0.0/29"}, "network is too small. Minimum useful network prefix is /28"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "10.6.0.0"}, "SubnetMin is not in the range of the Network"),
    ({"Network": "10.5.0.0/16", "SubnetMax": "10.4.255.0"}, "SubnetMax is not in the range of the Network"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.0.1"}, "SubnetMin is not on a SubnetLen boundary: 10.5.0.1"),
    ({"Network": "10.5.0.0/16", "SubnetMax": "10.5.3.128"},
     "SubnetMax is not on a SubnetLen boundary: 10.5.3.128"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "ipip"}}, "unknown backend type: ipip"),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": "Wireguard"}}, "unknown backend type: wireguard"),
    ({"Network": "10.5.0.0/16", "Backend": "vxlan"}, "error decoding Backend property of config: "),
    ({"Network": "10.5.0.0/16", "Backend": {"Type": 3}}, "error decoding Backend property of config: "),
    ({"Network": "fc00::/48"}, "invalid IPv4 CIDR format in Network"),
    ({"Network": "10.5.0.0"}, "invalid CIDR address in Network"),
    ({"Network": "10.5.0.0/33"}, "invalid CIDR address in Network"),
    ({"Network": "10.5.0.0/255.255.0.0"}, "invalid CIDR address in Network"),
    ({"Network": ""}, "invalid CIDR address in Network"),
    ({"Network": 10}, "Network must be a CIDR string"),
    ({"Network": "10.5.0.0/16", "SubnetLen": "24"}, "SubnetLen must be a non-negative integer"),
    ({"Network": "10.5.0.0/16", "SubnetLen": -1}, "SubnetLen must be a non-negative integer"),
    ({"Network": "10.5.0.0/16", "SubnetLen": 24.5}, "SubnetLen must be a non-negative integer"),
    ({"Network": "10.5.0.0/16", "SubnetLen": True}, "SubnetLen must be a non-negative integer"),
    ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.1"}, "invalid IP address in SubnetMin"),
    ({"Network": "10.5.0.0/16", "SubnetMax": 5}, "SubnetMax must be an IPv4 address string"),
    ({"Network": "10.5.0.0/16", "EnableIPv4": "yes"}, "EnableIPv4 must be true or false"),
    ({"Network": "10.5.0.0/16", "EnableIPv4": False}, "none defined stack"),
])
def test_messages(doc, message):
    assert err(doc).startswith(message)


def test_missing_backend_type_is_an_error_like_flannel():
    # flannel: Type "" -> constructors[""] missing -> "unknown backend type: ".
    assert err({"Network": "10.5.0.0/16", "Backend": {}}).startswith("unknown backend type: ")
    assert "Backend.Type is missing" in err('{"Network":"10.5.0.0/16","Backend":null}')


def test_ipv6_stacks_the_daemon_cannot_run_are_named():
    """Valid configs the daemon refuses with a clear message (config.stack_problem)."""
    m = stack_problem(cfg(Network="10.5.0.0/16", EnableIPv6=True, IPv6Network="fc00::/48"))
    assert m is not None and "udp backend carries IPv4 only" in m
    m = stack_problem(cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48"))
    assert m is not None and "IPv6-only" in m and "udp backend carries IPv4 only" in m
    m = stack_problem(cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00::/48",
                          Backend={"Type": "udp"}))
    assert m is not None and "IPv6-only" in m
    assert stack_problem(cfg(Network="10.5.0.0/16")) is None


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_ipv6_only_runs_on_vxlan_and_host_gw(backend):
    """EnableIPv4 false with an IPv6Network is an IPv6-only network the daemon runs
    (docs/flannel-compat.md §"IPv6-only"); its IPv4 lease half is the placeholder 0.0.0.0/0."""
    c = cfg(EnableIPv4=False, EnableIPv6=True, IPv6Network="fc00:5::/48", Backend={"Type": backend})
    assert stack_problem(c) is None and c.ipv6_only
    assert c.lease_compatible(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("fc00:5:0:7::/64"))
    assert not c.lease_compatible(ipaddress.IPv4Network("10.5.1.0/24"), ipaddress.IPv6Network("fc00:5:0:7::/64"))
    assert not c.lease_compatible(ipaddress.IPv4Network("0.0.0.0/0"), None)
    # IPv4 fields in the JSON change nothing: the placeholder is still the only IPv4 half.
    c = cfg(EnableIPv4=False, EnableIPv6=True, Network="10.5.0.0/16", SubnetLen=24,
            IPv6Network="fc00:5::/48", Backend={"Type": backend})
    assert c.lease_compatible(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("fc00:5:0:7::/64"))


def test_ipv6_only_config_errors_are_flannels():
    assert err({"EnableIPv4": False, "Backend": {"Type": "vxlan"}}) == \
        "none defined stack: EnableIPv4 and EnableIPv6 are both false"
    assert err({"EnableIPv4": False, "EnableIPv6": False, "IPv6Network": "fc00::/48"}) == \
        "none defined stack: EnableIPv4 and EnableIPv6 are both false"
    assert err({"EnableIPv4": False, "EnableIPv6": True, "Backend": {"Type": "vxlan"}}) == \
        "please define a correct IPv6Network parameter in the flannel config"


@pytest.mark.parametrize("raw", ["", "{", "[1]", "null", '"x"', "{'Network': 1}", '{"Network":NaN}',
                                 b"\xff\xfe", '{"a":Infinity}'])
def test_invalid_json(raw):
    assert err(raw).startswith("invalid JSON in network config: ")


def test_network_errors_come_before_backend_type():
    assert err({"Backend": {"Type": "nope"}}).startswith("please define a correct Network")


def test_edge_of_address_space():
    c = cfg(Network="255.255.255.0/24", SubnetLen=26)
    assert c.subnet_min == A("255.255.255.64") and c.subnet_max == A("255.255.255.192")


# -- randomized: never anything but ConfigError -----------------------------------------------------


def test_ci_get_helper():
    from fastflannel.agent.config import ci_get
    assert ci_get({"port": 1, "Port": 2}, "Port") == 2 and ci_get({"PORT": 3}, "Port") == 3
    assert ci_get({}, "Port", 8285) == 8285 and ci_get(None, "Port", 7) == 7



_json = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                     | st.text(max_size=20), lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=12)
_keys = st.sampled_from(["Network", "network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend",
                         "EnableIPv4", "EnableIPv6", "backend", "x"])
_cidr = st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(v=4), st.integers(0, 34))
_vals = _json | _cidr | st.ip_addresses(v=4).map(str) | st.integers(0, 40) \
    | st.builds(lambda t: {"Type": t}, st.sampled_from(["udp", "vxlan", "host-gw", "x", ""]))


def _accepted_is_consistent(c) -> None:
    assert c.subnet_len <= 30 and c.subnet_len >= c.network.prefixlen + 2
    assert c.subnet_min in c.network and c.subnet_max in c.network
    assert c.subnet_min <= c.subnet_max or c.subnet_count == 0
    assert c.backend_type in ("udp", "vxlan", "host-gw")


def _one_line(e: ConfigError) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and len(msg) < 1000, repr(msg)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _vals, max_size=6))
def test_random_documents_only_raise_configerror(doc):
    try:
        c = parse_config(json.dumps(doc))
    except ConfigError as e:
        _one_line(e)
        return
    _accepted_is_consistent(c)       # whatever is accepted is internally consistent


_VALID = b'{"Network": "10.0.0.0/8", "SubnetLen": 20, "Backend": {"Type": "vxlan", "VNI": 100}}'
# A valid document with one slice replaced by random bytes: mostly broken, sometimes still valid.
_mutated = st.builds(lambda i, j, junk: _VALID[:i] + junk + _VALID[i + j:],
                     st.integers(0, len(_VALID)), st.integers(0, 8), st.binary(max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64) | _mutated)
def test_random_bytes_give_a_one_line_configerror_or_a_consistent_config(raw):
    try:
        c = parse_config(raw)
    except ConfigError as e:
        _one_line(e)
        return
    doc = json.loads(raw)                     # accepted input is a JSON object ...
    assert isinstance(doc, dict)
    _accepted_is_consistent(c)                # ... that gives a consistent config
    again = parse_config(json.dumps(doc))       # and parses the same once re-serialized
    assert dataclasses.replace(again, raw="") == dataclasses.replace(c, raw="")
