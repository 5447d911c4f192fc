"""Lease values and keys, byte for byte as flannel writes them
(docs/flannel-compat.md §"Keys", §"Lease JSON")."""
from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastflannel.agent.lease import (
    Lease,
    LeaseAttrs,
    LeaseEvent,
    LeaseFormatError,
    decode_attrs,
    encode_attrs,
    parse_subnet_key,
    subnet_key,
)

UDP = b'{"PublicIP":"192.0.2.10","PublicIPv6":null}'
VXLAN = (b'{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
         b'"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')
HOSTGW = b'{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"host-gw"}'


# -- encoding ---------------------------------------------------------------------------------------

def test_udp_bytes():
    assert encode_attrs(LeaseAttrs(A("192.0.2.10"))) == UDP
    assert LeaseAttrs(A("192.0.2.10")).to_json() == UDP


def test_vxlan_bytes():
    a = LeaseAttrs(A("192.168.64.3"), "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"})
    assert encode_attrs(a) == VXLAN


def test_hostgw_bytes():
    assert encode_attrs(LeaseAttrs(A("192.0.2.11"), "host-gw")) == HOSTGW


def test_go_html_escaping():
    a = LeaseAttrs(A("192.0.2.1"), "x<y", {"k": "a&b>"})
    assert encode_attrs(a) == (b'{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"x\\u003cy",'
                               b'"BackendData":{"k":"a\\u0026b\\u003e"}}')


# -- decoding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [UDP, VXLAN, HOSTGW])
def test_roundtrip(raw):
    assert encode_attrs(decode_attrs(raw)) == raw


def test_decode_v06_udp_and_pre_v014_vxlan():
    assert decode_attrs(b'{"PublicIP":"10.0.0.1"}') == LeaseAttrs(A("10.0.0.1"))
    a = decode_attrs('{"PublicIP":"10.0.0.2","BackendType":"vxlan","BackendData":{"VtepMAC":"aa:bb:cc:dd:ee:ff"}}')
    assert a.backend_data == {"VtepMAC": "aa:bb:cc:dd:ee:ff"}


def test_decode_case_insensitive_last_key_wins_unknown_ignored():
    # As Go's encoding/json (checked with go1.19): every key that folds to a field's name sets
    # it in document order, so the last wins; KELVIN SIGN and LONG S fold to k and s.
    a = decode_attrs('{"publicip":"10.0.0.9","PUBLICIP":"10.0.0.8","backendtype":"vxlan",'
                     '"backenddata":{"VNI":2},"Extra":1,"BackendV6Data":{"x":1}}')
    assert a.public_ip == A("10.0.0.8")
    assert a.backend_type == "vxlan" and a.backend_data == {"VNI": 2}
    assert decode_attrs('{"PublicIP":"10.0.0.7","publicip":"10.0.0.9"}').public_ip == A("10.0.0.9")
    assert decode_attrs('{"publicip":"10.0.0.9","PublicIP":"10.0.0.7"}').public_ip == A("10.0.0.7")
    assert decode_attrs('{"PublicIP":"10.0.0.7","BackendType":"x","backendtype":null}').backend_type == "x"
    assert decode_attrs('{"PublicIP":"10.0.0.7","Bac\u212aendType":"vxlan"}').backend_type == "vxlan"


def test_decode_refuses_what_go_refuses():
    for raw in ('{"PublicIP":"10.0.0.7","Extra":NaN}', '{"PublicIP":"10.0.0.7","Extra":-Infinity}'):
        with pytest.raises(LeaseFormatError):
            decode_attrs(raw)


def test_decode_ipv6_only_lease_has_zero_public_ip():
    a = decode_attrs('{"PublicIP":"0.0.0.0","PublicIPv6":"fc00::1","BackendType":"vxlan"}')
    assert a.public_ip == A("0.0.0.0")


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'"x"', b'{"PublicIP":"1.2.3"}',
                                 b'{"PublicIP":5}', b'{"PublicIP":true}', b'{"PublicIP":"::1"}',
                                 b'{"PublicIP":"1.2.3.4","BackendType":7}',
                                 b'{"PublicIP":"1.2.3.4","BackendData":[1]}', b"\xff",
                                 b"[" * 100000])
def test_decode_garbage(raw):
    with pytest.raises(LeaseFormatError):
        decode_attrs(raw)


# -- keys -------------------------------------------------------------------------------------------

def test_key_format():
    assert subnet_key(N("10.5.34.0/24")) == "10.5.34.0-24"
    assert Lease(N("10.10.16.0/20"), None).key == "10.10.16.0-20"


@pytest.mark.parametrize("key,net", [
    ("10.5.34.0-24", "10.5.34.0/24"),
    ("/coreos.com/network/subnets/10.5.34.0-24", "10.5.34.0/24"),
    ("10.42.1.0-24&fc00:42:0:1::-64", "10.42.1.0/24"),          # dual-stack: v4 half used
    ("10.0.0.0-8", "10.0.0.0/8"),
    ("10.5.34.4-30", "10.5.34.4/30"),
])
def test_key_parse(key, net):
    assert parse_subnet_key(key) == N(net)


@pytest.mark.parametrize("key", [
    "", "10.5.34.0", "10.5.34.0/24", "10.5.34.0-", "-24", "10.5.34-24", "10.5.34.0-24x", "x10.5.34.0-24",
    "10.5.34.0-33", "10.5.34.1-24", "300.5.34.0-24", "010.5.34.0-24", "10.5.34.0-24&", "10.5.34.0-24&zz-64",
    "10.5.34.0-24&fc00::-", "10a5.34.0-24", "config",
])
def test_key_garbage(key):
    with pytest.raises(LeaseFormatError):
        parse_subnet_key(key)


def test_lease_public_ip_and_event():
    lease = Lease(N("10.5.1.0/24"), LeaseAttrs(A("192.0.2.1")), 1.0)
    assert lease.public_ip == A("192.0.2.1") and Lease(N("10.5.1.0/24"), None).public_ip is None
    assert LeaseEvent(LeaseEvent.REMOVED, lease).kind == "removed"
    assert Lease(lease.subnet, lease.attrs, 1.0, revision=5) == Lease(lease.subnet, lease.attrs, 1.0, revision=9)


# -- randomized -------------------------------------------------------------------------------------





@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.-&:abcdefx/ ", max_size=40))
def test_random_keys_parse_or_raise_formaterror(key):
    try:
        n = parse_subnet_key(key)
    except LeaseFormatError:
        return
    assert subnet_key(n) == key.rsplit("/", 1)[-1].split("&")[0]

@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.integers(0, 31))
def test_key_roundtrip(ip, plen):
    n = N((ip, plen), strict=False)
    assert parse_subnet_key(subnet_key(n)) == n

_scalar = st.none() | st.booleans() | st.integers() | st.text(max_size=15)
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                     max_leaves=8)

@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["PublicIP", "publicIP", "BackendType", "BackendData", "x"]),
                       _json | st.ip_addresses(v=4).map(str), max_size=4))
def test_random_values_decode_or_raise_formaterror(doc):
    import json
    try:
        a = decode_attrs(json.dumps(doc))
    except LeaseFormatError:
        return
    assert decode_attrs(encode_attrs(a)) == a


def test_prefix_32_key_rejected_like_flannel():
    # flannel parses the key's prefix length with a 5-bit limit: /32 is not a lease key.
    with pytest.raises(LeaseFormatError):
        parse_subnet_key("10.1.2.3-32")
