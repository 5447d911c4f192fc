"""Dual-stack lease keys and values, byte for byte as flannel v0.20.2 writes them
(docs/flannel-compat.md §"Keys", §"Lease JSON", §"Dual-stack").

The expected bytes follow from flannel's sources: `MakeSubnetKey` (subnet/subnet.go) joins
`IP4Net.StringSep(".", "-")` and `IP6Net.StringSep(":", "-")` with `&`; `LeaseAttrs` is the struct
{PublicIP ip.IP4; PublicIPv6 *ip.IP6; BackendType string `omitempty`; BackendData, BackendV6Data
json.RawMessage `omitempty`}, marshalled by encoding/json in field order; `ip.IP6.MarshalJSON`
writes `"%s"` of `IP6.String()` = `net.IP.String()` of `ToIP()`, which returns the big.Int's bytes
as they are when they are exactly four long; vxlan's BackendData is {VNI uint16; VtepMAC}.
"""
from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest

from fastflannel.agent.errors import LeaseFormatError
from fastflannel.agent.lease import (
    Lease,
    LeaseAttrs,
    decode_attrs,
    encode_attrs,
    encode_attrs_v2,
    go_ip6_string,
    parse_lease_key,
    subnet_key,
)

MAC4, MAC6 = "c6:d2:32:6f:8f:44", "7a:11:9c:00:2e:01"


def test_dual_stack_key():
    assert subnet_key(N("10.1.2.0/24"), N6("fc00:1:2::/64")) == "10.1.2.0-24&fc00:1:2::-64"
    lease = Lease(N("10.42.1.0/24"), None, ipv6_subnet=N6("fc00:42:0:1::/64"))
    assert lease.key == "10.42.1.0-24&fc00:42:0:1::-64"
    assert Lease(N("10.42.1.0/24"), None).key == "10.42.1.0-24"


@pytest.mark.parametrize("key, v4, v6", [
    ("10.1.2.0-24&fc00:1:2::-64", "10.1.2.0/24", "fc00:1:2::/64"),
    ("/coreos.com/network/subnets/10.42.1.0-24&fc00:42:0:1::-64", "10.42.1.0/24", "fc00:42:0:1::/64"),
    ("10.1.2.0-24&fd00::2-127", "10.1.2.0/24", "fd00::2/127"),
    ("0.0.0.0-0&fd42:0:0:1::-64", "0.0.0.0/0", "fd42:0:0:1::/64"),     # flannel's IPv6-only key
    ("10.1.2.0-24", "10.1.2.0/24", None),
])
def test_dual_stack_key_parse(key, v4, v6):
    assert parse_lease_key(key) == (N(v4), N6(v6) if v6 else None)


@pytest.mark.parametrize("key", [
    "10.1.2.0-24&FC00:1:2::-64",       # flannel's regex is lower-case [a-f\d:]
    "10.1.2.0-24&fc00:1:2:0::-64",     # not the compressed form flannel writes
    "10.1.2.0-24&fc00:01:2::-64",      # a leading zero
    "10.1.2.0-24&fc00:1:2::1-64",      # host bits
    "10.1.2.0-24&fc00:1:2::-128",      # ParseUint(.., 10, 7)
    "10.1.2.0-24&fc00:1:2::-064",
    "10.1.2.0-24&fc00:1:2::",
    "10.1.2.0-24&::ffff:10.0.0.0-104",  # dots: not flannel's regex
])
def test_dual_stack_key_garbage(key):
    with pytest.raises(LeaseFormatError):
        parse_lease_key(key)


@pytest.mark.parametrize("addr, text", [
    ("fc00:1:2::", "fc00:1:2::"),
    ("fc00:0:0:1::", "fc00:0:0:1::"),
    ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),         # of two equal runs, the first (Go and RFC 5952)
    ("1:0:1:1:1:1:1:1", "1:0:1:1:1:1:1:1"),       # one zero field stays
    ("::1", "::1"),
    ("::", "::"),
    ("::ffff:10.1.2.3", "10.1.2.3"),              # Go prints an IPv4-mapped address dotted
    ("::a01:203", "10.1.2.3"),                    # flannel's ToIP: four significant bytes -> IPv4
    ("::ff:ffff", "::ff:ffff"),                   # three bytes: 16-byte form
    ("::1:0:0", "::1:0:0"),                       # five bytes: 16-byte form
])
def test_go_ip6_string(addr, text):
    assert go_ip6_string(A6(addr)) == text


def test_vxlan_dual_stack_value_bytes():
    """vxlan's newSubnetAttrs: BackendData from the v4 device, BackendV6Data from flannel-v6.<VNI>."""
    attrs = LeaseAttrs(A("192.168.64.3"), "vxlan", {"VNI": 1, "VtepMAC": MAC4},
                       public_ipv6=A6("fd00:64::3"), backend_v6_data={"VNI": 1, "VtepMAC": MAC6})
    assert encode_attrs(attrs) == (
        b'{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"vxlan",'
        b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"7a:11:9c:00:2e:01"}}')
    assert decode_attrs(encode_attrs(attrs)) == attrs


def test_hostgw_dual_stack_value_bytes():
    """host-gw sets PublicIPv6 and no BackendData of either family."""
    attrs = LeaseAttrs(A("192.168.64.3"), "host-gw", public_ipv6=A6("fd00:64::3"))
    assert encode_attrs(attrs) == b'{"PublicIP":"192.168.64.3","PublicIPv6":"fd00:64::3","BackendType":"host-gw"}'
    assert decode_attrs(encode_attrs(attrs)) == attrs


def test_ipv4_only_value_is_unchanged():
    attrs = LeaseAttrs(A("192.168.64.3"), "vxlan", {"VNI": 1, "VtepMAC": MAC4})
    assert encode_attrs(attrs) == (b'{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
                                   b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')


def test_v2_store_writes_dual_stack_attrs_as_v015():
    """Only v0.15-v0.17 run dual-stack on the v2 store; they write the v0.15 layout."""
    attrs = LeaseAttrs(A("192.168.64.3"), "vxlan", {"VNI": 1, "VtepMAC": MAC4},
                       public_ipv6=A6("fd00:64::3"), backend_v6_data={"VNI": 1, "VtepMAC": MAC6})
    assert encode_attrs_v2(attrs) == encode_attrs(attrs)


def test_decode_a_flannel_dual_stack_value():
    raw = (b'{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan",'
           b'"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:02"}}')
    a = decode_attrs(raw)
    assert a.public_ipv6 == A6("fd00::2")
    assert a.backend_v6_data == {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"}
    assert a.backend_data == {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}
    assert decode_attrs(b'{"PublicIP":"10.0.0.2","PublicIPv6":null}').public_ipv6 is None
    assert decode_attrs(b'{"PublicIP":"10.0.0.2"}').public_ipv6 is None


@pytest.mark.parametrize("raw", [
    b'{"PublicIP":"10.0.0.2","PublicIPv6":"10.0.0.2"}',
    b'{"PublicIP":"10.0.0.2","PublicIPv6":"zz::"}',
    b'{"PublicIP":"10.0.0.2","PublicIPv6":5}',
    b'{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::2","BackendV6Data":[1]}',
])
def test_decode_refuses_bad_ipv6_fields(raw):
    with pytest.raises(LeaseFormatError):
        decode_attrs(raw)
