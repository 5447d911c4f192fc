"""Lease JSON on the etcd v2 store, byte for byte as flannel v0.6-v0.13 writes it, and read back.

The expected bytes follow from flannel's Go types and encoding/json (compact output, struct field
order, `omitempty` drops "" and a nil json.RawMessage, a json.Marshaler's output is embedded):
* subnet/subnet.go, tags v0.6.2 through v0.14.0: `type LeaseAttrs struct { PublicIP ip.IP4;
  BackendType string `json:",omitempty"`; BackendData json.RawMessage `json:",omitempty"` }`
  (PublicIPv6 *ip.IP6 arrives in v0.15.0); pkg/ip/ipnet.go: IP4.MarshalJSON is `"%s"` of the
  dotted quad.
* udp, backend/udp/udp.go (v0.6.2) and udp_amd64.go (v0.13.0): `LeaseAttrs{PublicIP: ...}` only.
* host-gw, backend/hostgw/hostgw.go (v0.6.2, v0.13.0): `LeaseAttrs{PublicIP, BackendType: "host-gw"}`.
* vxlan, backend/vxlan/vxlan.go newSubnetAttrs (v0.6.2, v0.13.0): BackendType "vxlan", BackendData =
  json.Marshal(&vxlanLeaseAttrs{hardwareAddr(mac)}) with `type vxlanLeaseAttrs struct { VtepMAC
  hardwareAddr }` (backend/vxlan/network.go v0.6.2, vxlan_network.go v0.13.0; `VNI uint16` is added
  in v0.14.0) and hardwareAddr.MarshalJSON = `%q` of net.HardwareAddr (lower-case, colons).
"""
from __future__ import annotations

import ipaddress
import json

from hypothesis import given
from hypothesis import strategies as st

from fastflannel.agent.lease import LeaseAttrs, decode_attrs, encode_attrs, encode_attrs_v2

IP = ipaddress.IPv4Address("192.168.64.3")
MAC = "c6:d2:32:6f:8f:44"

# What flanneld v0.6.2 .. v0.13.0 writes for each backend (module docstring for the derivation).
FLANNEL_V06_V013 = {
    "udp": b'{"PublicIP":"192.168.64.3"}',
    "host-gw": b'{"PublicIP":"192.168.64.3","BackendType":"host-gw"}',
    "vxlan": b'{"PublicIP":"192.168.64.3","BackendType":"vxlan","BackendData":{"VtepMAC":"c6:d2:32:6f:8f:44"}}',
}
# What our backends hand the registry (agent/backends/*.py lease_attrs).
OURS = {
    "udp": LeaseAttrs(IP),
    "host-gw": LeaseAttrs(IP, "host-gw"),
    "vxlan": LeaseAttrs(IP, "vxlan", {"VNI": 100, "VtepMAC": MAC}),
}


def test_we_write_what_flannel_v06_to_v013_writes():
    for backend, want in FLANNEL_V06_V013.items():
        assert encode_attrs_v2(OURS[backend]) == want, backend


def test_the_v3_store_keeps_the_modern_layout():
    assert encode_attrs(OURS["vxlan"]) == \
        b'{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":100,"VtepMAC":"' \
        + MAC.encode() + b'"}}'


def test_we_read_what_every_v2_era_flannel_writes():
    """v0.6-v0.13, then v0.14 (vxlan VNI) and v0.15-v0.17 (PublicIPv6 null) on the same v2 store."""
    later = {
        "v0.14 vxlan": b'{"PublicIP":"192.168.64.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"'
                       + MAC.encode() + b'"}}',
        "v0.15 udp": b'{"PublicIP":"192.168.64.3","PublicIPv6":null}',
    }
    for backend, raw in FLANNEL_V06_V013.items():
        got = decode_attrs(raw)
        assert got.public_ip == IP and got.backend_type == (None if backend == "udp" else backend)
        if backend == "vxlan":
            assert got.backend_data == {"VtepMAC": MAC}
    assert decode_attrs(later["v0.14 vxlan"]).backend_data == {"VNI": 1, "VtepMAC": MAC}
    assert decode_attrs(later["v0.15 udp"]) == LeaseAttrs(IP)


macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))


@given(ip=st.integers(1, 2**32 - 2).map(ipaddress.IPv4Address), mac=macs, vni=st.integers(0, 2**24 - 1),
       btype=st.sampled_from([None, "host-gw", "vxlan"]))
def test_v2_layout_round_trips(ip, mac, vni, btype):
    attrs = LeaseAttrs(ip, btype, {"VNI": vni, "VtepMAC": mac} if btype == "vxlan" else None)
    raw = encode_attrs_v2(attrs)
    obj = json.loads(raw)
    fields = ["PublicIP"] + (["BackendType"] if btype else []) + (["BackendData"] if btype == "vxlan" else [])
    assert list(obj) == fields
    back = decode_attrs(raw)
    assert back.public_ip == ip and back.backend_type == btype
    assert back.backend_data == ({"VtepMAC": mac} if btype == "vxlan" else None)
    assert b" " not in raw                            # Go's compact encoding
