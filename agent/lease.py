"""Lease values and keys exactly as flannel writes them (docs/flannel-compat.md §"Keys",
§"Lease JSON").

A lease lives at `<prefix>/subnets/<ip>-<len>` (dual-stack: `<ip>-<len>&<ipv6>-<len>`); its value is
Go's JSON of `LeaseAttrs`, field order PublicIP, PublicIPv6 (null on IPv4-only hosts), BackendType
(omitempty), BackendData (omitempty), BackendV6Data (omitempty). udp sets no BackendType.

Only the spelling flannel writes is a lease key (docs/architecture.md §"Lease admission"): a key
that names a subnet in another way (`10.5.34.0-024`, non-ASCII digits, a trailing newline, a
deeper path) would be a second key for a live host's subnet, and its deletion would look like
that host's.
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .errors import LeaseFormatError

# flannel's regex (pkg/subnet/subnet.go) is unanchored at the start and leaves two dots
# unescaped; we match the whole name (fullmatch: `$` would allow a trailing newline) with ASCII
# digits only (Python's \d takes any Unicode digit, Go's RE2 does not).
_KEY_RE = re.compile(r"([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)-([0-9]+)(?:&([a-f0-9:]+)-([0-9]+))?")
MAX_LEASE_VALUE_BYTES = 8192    # a lease flannel writes is under 300 bytes; more is not a lease
_MAC_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address
IPv6Network = ipaddress.IPv6Network
IPv6Address = ipaddress.IPv6Address
# The IPv4 half of an IPv6-only lease: flannel's zero IP4Net, so the key is `0.0.0.0-0&<ipv6>-<len>`
# (docs/flannel-compat.md §"IPv6-only").
NO_SUBNET = IPv4Network("0.0.0.0/0")
# What tells a lease from the others: its IPv4 subnet, or an IPv6-only lease's IPv6 subnet.
Slot = Union[IPv4Network, IPv6Network]


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: IPv4Address
    backend_type: Optional[str] = None          # None for udp and alloc (omitted from JSON)
    backend_data: Optional[dict] = None         # e.g. {"VNI": 100, "VtepMAC": "aa:..."}
    public_ipv6: Optional[IPv6Address] = None   # None: IPv4-only (JSON null)
    backend_v6_data: Optional[dict] = None      # the IPv6 vxlan device's, like backend_data

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
    ipv6_subnet: Optional[IPv6Network] = None   # the IPv6 half of a dual-stack key
    # The store revision that created the key (etcd v3 create_revision, v2 createdIndex): of two
    # leases that claim one subnet, the earlier-created keeps it (subnets.SubnetManager).
    created: int = field(default=0, compare=False)

    @property
    def public_ip(self) -> Optional[IPv4Address]:
        return self.attrs.public_ip if self.attrs else None

    @property
    def public_ipv6(self) -> Optional[IPv6Address]:
        return self.attrs.public_ipv6 if self.attrs else None

    @property
    def key(self) -> str:
        return subnet_key(self.subnet, self.ipv6_subnet)

    @property
    def slot(self) -> Slot:
        """The subnet that identifies this lease among the others: the IPv4 one, or for an
        IPv6-only lease (IPv4 half 0.0.0.0/0, the same for every such host) the IPv6 one."""
        if self.subnet == NO_SUBNET and self.ipv6_subnet is not None:
            return self.ipv6_subnet
        return self.subnet

    @property
    def public_address(self) -> Optional[IPv4Address | IPv6Address]:
        """The address the lease's host is known by: PublicIP, or an IPv6-only lease's
        PublicIPv6 (its PublicIP is 0.0.0.0)."""
        return self.public_ipv6 if self.slot.version == 6 else self.public_ip


def slot_order(slot: Slot) -> tuple:
    """A sort key for slots of both families (IPv4 first; Python cannot compare the two)."""
    return slot.version, int(slot.network_address), slot.prefixlen


def slot_key(slot: Slot) -> str:
    """The lease key a slot stands for when no lease value is at hand."""
    if isinstance(slot, IPv6Network):
        return subnet_key(NO_SUBNET, slot)
    return subnet_key(slot)


def go_ip6_string(addr: IPv6Address) -> str:
    """The text flannel writes for an IPv6 address (`ip.IP6.String()`): Go's net.IP.String of the
    address, which is RFC 5952 (as Python's `compressed`) except that an IPv4-mapped address
    prints as a dotted quad, and flannel's big.Int round trip turns a value of exactly four
    significant bytes (`::100:0` .. `::ffff:ffff`) into a dotted quad too (docs/flannel-compat.md
    §"Keys")."""
    value = int(addr)
    if 1 << 24 <= value < 1 << 32 or value >> 32 == 0xFFFF:
        return str(IPv4Address(value & 0xFFFFFFFF))
    return addr.compressed


def subnet_key(net: IPv4Network, net6: Optional[IPv6Network] = None) -> str:
    """`10.5.34.0/24` -> `10.5.34.0-24` (flannel's IP4Net.StringSep(".", "-")); with an IPv6
    subnet `10.5.34.0-24&fc00:5:34::-64` (flannel's MakeSubnetKey)."""
    key = f"{net.network_address}-{net.prefixlen}"
    if net6 is None:
        return key
    return f"{key}&{go_ip6_string(net6.network_address)}-{net6.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network:
    """The IPv4 subnet of a lease key (see parse_lease_key)."""
    return parse_lease_key(key)[0]


def parse_lease_key(key: str) -> tuple[IPv4Network, Optional[IPv6Network]]:
    """Parse a lease key (`<prefix>/subnets/<ip>-<len>[&<ipv6>-<len>]`, or the bare name) into its
    IPv4 and IPv6 subnets. Only flannel's own spelling of either half is a key."""
    parts = key.rsplit("/", 2)
    if len(parts) > 1 and parts[-2] != "subnets":
        raise LeaseFormatError(f"bad subnet key {key!r}: not directly under subnets/")
    m = _KEY_RE.fullmatch(parts[-1])
    if not m:
        raise LeaseFormatError(f"bad subnet key {key!r}")
    plen = int(m.group(2))
    if plen > 31:   # flannel parses the length with a 5-bit limit
        raise LeaseFormatError(f"bad prefix length in subnet key {key!r}")
    net6: Optional[IPv6Network] = None
    try:
        net = ipaddress.IPv4Network(f"{m.group(1)}/{plen}", strict=True)
        if m.group(3) is not None:
            if int(m.group(4)) > 127:                # flannel: ParseUint(.., 10, 7)
                raise ValueError("IPv6 prefix length over 127")
            net6 = ipaddress.IPv6Network(f"{m.group(3)}/{int(m.group(4))}", strict=True)
    except ValueError as e:
        raise LeaseFormatError(f"bad subnet key {key!r}: {e}") from None
    if parts[-1] != subnet_key(net, net6):
        raise LeaseFormatError(f"bad subnet key {key!r}: not spelled as flannel writes it "
                               f"({subnet_key(net, net6)})")
    return net, net6


# Go's encoding/json string escapes: the short forms only for \n \r \t, \u00XX for the other
# control characters (Python writes \b and \f), HTML-safe <, >, &, and U+2028/U+2029.
_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "<": "\\u003c",
               ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _go_string(text: str) -> str:
    out = []
    for ch in text:
        esc = _GO_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            out.append("\ufffd")                     # Go writes invalid UTF-8 as U+FFFD
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _go_json(value: Any) -> str:
    """Go's encoding/json, compact; objects keep their key order (ours are Go structs)."""
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_go_string(str(k))}:{_go_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    return json.dumps(value)


def encode_attrs(attrs: LeaseAttrs) -> bytes:
    """Byte-for-byte flannel: `{"PublicIP":"…","PublicIPv6":null|"…"[,"BackendType":…]
    [,"BackendData":…][,"BackendV6Data":…]}`."""
    v6 = "null" if attrs.public_ipv6 is None else _go_json(go_ip6_string(attrs.public_ipv6))
    parts = [f'"PublicIP":{_go_json(str(attrs.public_ip))}', f'"PublicIPv6":{v6}']
    if attrs.backend_type:
        parts.append(f'"BackendType":{_go_json(attrs.backend_type)}')
    if attrs.backend_data is not None:
        parts.append(f'"BackendData":{_go_json(attrs.backend_data)}')
    if attrs.backend_v6_data is not None:
        parts.append(f'"BackendV6Data":{_go_json(attrs.backend_v6_data)}')
    return ("{" + ",".join(parts) + "}").encode()


def encode_attrs_v2(attrs: LeaseAttrs) -> bytes:
    """Byte for byte what flannel v0.6-v0.13 writes on the etcd v2 store (docs/flannel-compat.md
    §"The etcd v2 store"): `{"PublicIP":"…"[,"BackendType":…][,"BackendData":…]}`, no PublicIPv6
    (v0.15+), and vxlan's BackendData without "VNI" (v0.14+): `{"VtepMAC":"…"}`. Dual-stack
    attrs exist only in v0.15-v0.17, the last versions on the v2 store: those are written as
    v0.15 writes them (encode_attrs)."""
    if attrs.public_ipv6 is not None or attrs.backend_v6_data is not None:
        return encode_attrs(attrs)
    parts = [f'"PublicIP":{_go_json(str(attrs.public_ip))}']
    if attrs.backend_type:
        parts.append(f'"BackendType":{_go_json(attrs.backend_type)}')
    data = attrs.backend_data
    if data is not None and attrs.backend_type == "vxlan":
        data = {k: v for k, v in data.items() if k != "VNI"}
    if data is not None:
        parts.append(f'"BackendData":{_go_json(data)}')
    return ("{" + ",".join(parts) + "}").encode()


class GoObject(dict):
    """A JSON object with every key kept in document order, duplicates too (`pairs`): Go's
    decoder sees them all (json.loads(..., object_pairs_hook=GoObject))."""

    def __init__(self, pairs: Any = ()):
        pairs = list(pairs.items() if isinstance(pairs, dict) else pairs)
        super().__init__(pairs)
        self.pairs = pairs


def _go_fold(key: str) -> str:
    # Go matches keys to field names with Unicode simple case folding; against the ASCII names
    # used here that also lets KELVIN SIGN (U+212A) stand for k and LONG S (U+017F) for s.
    return key.replace("\u017f", "s").lower()


def json_key(obj: dict, name: str, default: Any = None, raw: bool = False) -> Any:
    """A field of a JSON object as Go's decoder fills it: every key equal to `name` under Go's
    case folding sets it, in document order, so the last one wins; a JSON null changes nothing
    (`raw`: the field is a json.RawMessage, which a null sets too). `default` when none did."""
    low = name.lower()
    pairs = obj.pairs if isinstance(obj, GoObject) else obj.items()
    found = default
    for k, v in pairs:
        if (v is not None or raw) and isinstance(k, str) and (k == name or _go_fold(k) == low):
            found = v
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")           # Python reads NaN/Infinity, Go does not


def go_json_loads(raw: bytes | str) -> Any:
    """json.loads as strict as Go's decoder: UTF-8 only (json.loads would guess UTF-16/32 from
    bytes), no NaN/Infinity, objects as GoObject."""
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    return json.loads(text, parse_constant=_no_constant, object_pairs_hook=GoObject)


def decode_attrs(raw: bytes | str) -> LeaseAttrs:
    """A lease value; LeaseFormatError for anything flannel would not have written."""
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > MAX_LEASE_VALUE_BYTES:
        raise LeaseFormatError(f"lease value of {size} bytes (over {MAX_LEASE_VALUE_BYTES})")
    try:
        obj = go_json_loads(raw)
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
    v6data = json_key(obj, "BackendV6Data")
    if v6data is not None and not isinstance(v6data, dict):
        raise LeaseFormatError("BackendV6Data is not a JSON object")
    return LeaseAttrs(public_ip=public_ip, backend_type=btype or None, backend_data=bdata,
                      public_ipv6=_decode_ipv6(json_key(obj, "PublicIPv6")),
                      backend_v6_data=v6data)


def _decode_ipv6(pub: Any) -> Optional[IPv6Address]:
    """PublicIPv6: null (an IPv4-only host) or IPv6 text. flannel's decoder would also take IPv4
    text (as ::ffff:a.b.c.d), which no flannel writes; it is refused here."""
    if pub is None:
        return None
    if not isinstance(pub, str):
        raise LeaseFormatError(f"bad PublicIPv6 {pub!r}")
    try:
        return IPv6Address(pub)
    except ValueError:
        raise LeaseFormatError(f"bad PublicIPv6 {pub!r}") from None


def valid_peer_mac(mac: Optional[str]) -> bool:
    """A VTEP MAC another host may announce: lower-case `aa:bb:cc:dd:ee:ff`, unicast, not zero.
    It need not be locally administered: flannel before v0.15.1 let the kernel pick it."""
    if not isinstance(mac, str) or not _MAC_RE.fullmatch(mac):
        return False
    return not int(mac[:2], 16) & 0x01 and mac != "00:00:00:00:00:00"


def vtep_mac(attrs: Optional[LeaseAttrs]) -> Optional[str]:
    """The VtepMAC of a vxlan lease (BackendData, keys matched like Go), lower-cased; None when
    absent or not a usable unicast MAC (docs/flannel-compat.md §"Lease JSON")."""
    if attrs is None or not isinstance(attrs.backend_data, dict):
        return None
    mac = json_key(attrs.backend_data, "VtepMAC")
    if not isinstance(mac, str):
        return None
    mac = mac.lower()
    return mac if valid_peer_mac(mac) else None


def vtep_mac6(attrs: Optional[LeaseAttrs]) -> Optional[str]:
    """The VtepMAC of a vxlan lease's IPv6 device (BackendV6Data), as vtep_mac does it."""
    if attrs is None:
        return None
    return vtep_mac(LeaseAttrs(attrs.public_ip, "vxlan", attrs.backend_v6_data))


@dataclass(frozen=True)
class LeaseEvent:
    """ADDED carries the new lease; REMOVED carries the last known lease (flannel's LeaseWatcher)."""
    ADDED = "added"
    REMOVED = "removed"
    kind: str
    lease: Lease
