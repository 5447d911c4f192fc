"""Lease values and keys exactly as flannel writes them (docs/flannel-compat.md §"Keys",
§"Lease JSON").

A lease lives at `<prefix>/subnets/<ip>-<len>`; its value is Go's JSON of `LeaseAttrs`, field order
PublicIP, PublicIPv6, BackendType (omitempty), BackendData (omitempty). udp sets no BackendType.
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import LeaseFormatError

# flannel's regex (pkg/subnet/subnet.go) is unanchored at the start and leaves two dots
# unescaped; we accept the same keys but anchor both ends so junk prefixes are rejected.
_KEY_RE = re.compile(r"^(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-fA-F\d:]+)-(\d+))?$")

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: IPv4Address
    backend_type: Optional[str] = None          # None for udp and alloc (omitted from JSON)
    backend_data: Optional[dict] = None         # e.g. {"VNI": 100, "VtepMAC": "aa:..."}

    def to_json(self) -> bytes:
        return encode_attrs(self)


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    # None only on REMOVED events straight from etcd (a DELETE carries no value); the peer
    # tracker substitutes the last known attrs before backends see the event.
    attrs: Optional[LeaseAttrs]
    # Seconds since the epoch when etcd will drop the key; None = no TTL (a reservation).
    expiration: Optional[float] = None
    revision: int = field(default=0, compare=False)

    @property
    def public_ip(self) -> Optional[IPv4Address]:
        return self.attrs.public_ip if self.attrs else None

    @property
    def key(self) -> str:
        return subnet_key(self.subnet)


def subnet_key(net: IPv4Network) -> str:
    """`10.5.34.0/24` -> `10.5.34.0-24` (flannel's IP4Net.StringSep(".", "-"))."""
    return f"{net.network_address}-{net.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network:
    """Parse the last path element of a lease key; the IPv6 half of a dual-stack key is ignored."""
    name = key.rsplit("/", 1)[-1]
    m = _KEY_RE.match(name)
    if not m:
        raise LeaseFormatError(f"bad subnet key {key!r}")
    plen = int(m.group(2))
    if plen > 31:   # flannel parses the length with a 5-bit limit
        raise LeaseFormatError(f"bad prefix length in subnet key {key!r}")
    try:
        return ipaddress.IPv4Network(f"{m.group(1)}/{plen}", strict=True)
    except ValueError as e:
        raise LeaseFormatError(f"bad subnet key {key!r}: {e}") from None


def _go_json(value: Any) -> str:
    # Go's encoding/json: compact separators, HTML-safe escaping of <, >, &.
    s = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def encode_attrs(attrs: LeaseAttrs) -> bytes:
    """Byte-for-byte flannel: `{"PublicIP":"…","PublicIPv6":null[,"BackendType":…][,"BackendData":…]}`."""
    parts = [f'"PublicIP":{_go_json(str(attrs.public_ip))}', '"PublicIPv6":null']
    if attrs.backend_type:
        parts.append(f'"BackendType":{_go_json(attrs.backend_type)}')
    if attrs.backend_data is not None:
        parts.append(f'"BackendData":{_go_json(attrs.backend_data)}')
    return ("{" + ",".join(parts) + "}").encode()


def encode_attrs_v2(attrs: LeaseAttrs) -> bytes:
    """Byte for byte what flannel v0.6-v0.13 writes on the etcd v2 store (docs/flannel-compat.md
    §"The etcd v2 store"): `{"PublicIP":"…"[,"BackendType":…][,"BackendData":…]}`, no PublicIPv6
    (v0.15+), and vxlan's BackendData without "VNI" (v0.14+): `{"VtepMAC":"…"}`."""
    parts = [f'"PublicIP":{_go_json(str(attrs.public_ip))}']
    if attrs.backend_type:
        parts.append(f'"BackendType":{_go_json(attrs.backend_type)}')
    data = attrs.backend_data
    if data is not None and attrs.backend_type == "vxlan":
        data = {k: v for k, v in data.items() if k != "VNI"}
    if data is not None:
        parts.append(f'"BackendData":{_go_json(data)}')
    return ("{" + ",".join(parts) + "}").encode()


def json_key(obj: dict, name: str, default: Any = None) -> Any:
    """Go's JSON decoder: an exact key wins, otherwise the first case-insensitive match."""
    if name in obj:
        return obj[name]
    low = name.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return default


def decode_attrs(raw: bytes | str) -> LeaseAttrs:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise LeaseFormatError(f"lease value is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise LeaseFormatError("lease value is not a JSON object")
    pub = json_key(obj, "PublicIP")
    if pub is not None and not isinstance(pub, str):
        # Go's ip.IP4 unmarshals only from a JSON string; ipaddress would take 5 as 0.0.0.5.
        raise LeaseFormatError(f"bad PublicIP {pub!r}")
    try:
        public_ip = ipaddress.IPv4Address(pub if pub is not None else "0.0.0.0")
    except ValueError:
        raise LeaseFormatError(f"bad PublicIP {pub!r}") from None
    btype = json_key(obj, "BackendType")
    if btype is not None and not isinstance(btype, str):
        raise LeaseFormatError(f"bad BackendType {btype!r}")
    bdata = json_key(obj, "BackendData")
    if bdata is not None and not isinstance(bdata, dict):
        raise LeaseFormatError("BackendData is not a JSON object")
    return LeaseAttrs(public_ip=public_ip, backend_type=btype or None, backend_data=bdata)


@dataclass(frozen=True)
class LeaseEvent:
    """ADDED carries the new lease; REMOVED carries the last known lease (flannel's LeaseWatcher)."""
    ADDED = "added"
    REMOVED = "removed"
    kind: str
    lease: Lease
