"""The network config JSON at `<prefix>/config`, parsed and checked the way flannel does
(docs/flannel-compat.md §"Config JSON and defaults").

flannel (`pkg/subnet/config.go`) decodes with Go's encoding/json: keys match case-insensitively,
unknown keys are ignored, a JSON `null` leaves the default in place, and a value of the wrong JSON
type is an error. `CheckNetworkConfig` then fills in the defaults and validates, with the messages
reproduced here word for word (modern lowercase spelling).

The IPv6 fields (`EnableIPv6`, `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`, `IPv6SubnetMax`)
are checked after the IPv4 ones, as flannel does; with `EnableIPv4: false` the IPv4 fields keep
their zero values unchecked (docs/flannel-compat.md §"Dual-stack").

Where fastflannel differs, on purpose:
* `IPv6Network`, `IPv6SubnetMin` and `IPv6SubnetMax` take IPv6 text only (flannel's decoder turns
  IPv4 text into an IPv4-mapped IPv6 value).
* Messages for JSON type errors name the field ("SubnetLen must be a non-negative integer")
  instead of Go's "cannot unmarshal string into Go struct field Config.SubnetLen of type uint".
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .backends import BACKENDS, IPV6_BACKENDS
from .errors import ConfigError
from .lease import go_ip6_string, go_json_loads, json_key

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address
IPv6Network = ipaddress.IPv6Network
IPv6Address = ipaddress.IPv6Address

DEFAULT_BACKEND = "udp"             # flannel's parseBackendType when Backend is absent (#1221)
DEFAULT_SUBNET_LEN = 24             # bits; for networks of prefix <= 22
MIN_NETWORK_PREFIX = 28             # bits; a smaller network cannot hold four subnets of >= 4 addresses
MAX_SUBNET_LEN = 30                 # bits; "SubnetLen must be less than /31"
DEFAULT_IPV6_SUBNET_LEN = 64        # bits; for IPv6 networks of prefix <= 62
MIN_IPV6_NETWORK_PREFIX = 124       # bits
MAX_IPV6_SUBNET_LEN = 126           # bits; "SubnetLen must be less than /127"
_NO_NETWORK = IPv4Network("0.0.0.0/0")   # flannel's zero IP4Net (an IPv6-only config)

# Go's net.ParseCIDR: dotted quad, a slash, a decimal prefix length (no netmask form).
_CIDR_RE = re.compile(r"^([0-9.]+)/([0-9]+)$")
_SENTINEL = object()


def ci_get(obj: dict, name: str, default: Any = None) -> Any:
    """A key of a JSON object matched like Go (lease.json_key: case-insensitive, last wins); `default`
    when absent or null. For backends that get the raw Backend dict."""
    value = json_key(obj, name, None) if isinstance(obj, dict) else None
    return default if value is None else value


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend_type: str                       # lowercased; "udp" when Backend is absent
    backend: dict = field(default_factory=dict)   # the Backend object as given ({} when absent)
    raw: str = ""
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    ipv6_network: Optional[IPv6Network] = None          # set when enable_ipv6
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: Optional[IPv6Address] = None
    ipv6_subnet_max: Optional[IPv6Address] = None

    @property
    def ipv6_only(self) -> bool:
        """EnableIPv4 false (EnableIPv6 then true): each host leases an IPv6 subnet alone, under
        the IPv4 placeholder 0.0.0.0/0 (docs/flannel-compat.md §"IPv6-only")."""
        return not self.enable_ipv4

    @property
    def subnet_size(self) -> int:
        """Addresses per host subnet (flannel's subnetSize)."""
        return 1 << (32 - self.subnet_len)

    @property
    def subnet_count(self) -> int:
        """Number of aligned subnets in [SubnetMin, SubnetMax] (0 if Min > Max)."""
        span = int(self.subnet_max) - int(self.subnet_min)
        return span // self.subnet_size + 1 if span >= 0 else 0

    def backend_option(self, name: str, default: Any = None) -> Any:
        """A key of the Backend object, matched like Go (case-insensitive, the last one wins);
        `default` when absent or JSON null."""
        return ci_get(self.backend, name, default)

    def subnet_compatible(self, subnet: IPv4Network) -> bool:
        """flannel's isSubnetConfigCompat: the subnet IP lies in [SubnetMin, SubnetMax] and its
        prefix length is SubnetLen."""
        return (subnet.prefixlen == self.subnet_len
                and self.subnet_min <= subnet.network_address <= self.subnet_max)

    def ipv6_subnet_compatible(self, subnet6: Optional[IPv6Network]) -> bool:
        """flannel's isIPv6SubnetConfigCompat: without EnableIPv6 a lease must have no IPv6
        subnet; with it, one in [IPv6SubnetMin, IPv6SubnetMax] of length IPv6SubnetLen."""
        if not self.enable_ipv6:
            return subnet6 is None
        if subnet6 is None or self.ipv6_subnet_min is None or self.ipv6_subnet_max is None:
            return False
        return (subnet6.prefixlen == self.ipv6_subnet_len
                and self.ipv6_subnet_min <= subnet6.network_address <= self.ipv6_subnet_max)

    def lease_compatible(self, subnet: IPv4Network, subnet6: Optional[IPv6Network]) -> bool:
        """Both halves of a lease key fit the config (flannel reuses a lease only then); an
        IPv6-only lease's IPv4 half is the placeholder 0.0.0.0/0, whatever the IPv4 fields say."""
        v4_ok = subnet == _NO_NETWORK if self.ipv6_only else self.subnet_compatible(subnet)
        return v4_ok and self.ipv6_subnet_compatible(subnet6)


def _parse_cidr(value: Any, fld: str) -> IPv4Network:
    if not isinstance(value, str):
        raise ConfigError(f"{fld} must be a CIDR string like \"10.5.0.0/16\", got {json.dumps(value)}")
    m = _CIDR_RE.match(value)
    if not m:
        if ":" in value:
            raise ConfigError(f"invalid IPv4 CIDR format in {fld}: {value!r}")
        raise ConfigError(f"invalid CIDR address in {fld}: {value!r}")
    try:
        addr = ipaddress.IPv4Address(m.group(1))
        plen = int(m.group(2))
        if plen > 32:
            raise ValueError("prefix length > 32")
    except ValueError:
        raise ConfigError(f"invalid CIDR address in {fld}: {value!r}") from None
    return ipaddress.IPv4Network((addr, plen), strict=False)     # ParseCIDR masks the host bits


def _parse_ip(value: Any, fld: str) -> Optional[IPv4Address]:
    """None for absent/null/"0.0.0.0", which flannel treats as "use the default"."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{fld} must be an IPv4 address string, got {json.dumps(value)}")
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(f"invalid IP address in {fld}: {value!r}") from None
    return None if int(ip) == 0 else ip


def _parse_cidr6(value: Any, fld: str) -> IPv6Network:
    if not isinstance(value, str):
        raise ConfigError(f"{fld} must be a CIDR string like \"fc00::/48\", got {json.dumps(value)}")
    addr, slash, plen = value.partition("/")
    if not slash or not plen.isdigit() or not plen.isascii() or int(plen) > 128:
        raise ConfigError(f"invalid CIDR address in {fld}: {value!r}")
    try:
        ip = IPv6Address(addr)
    except ValueError:
        kind = "IPv6 CIDR format" if "." in addr and ":" not in addr else "CIDR address"
        raise ConfigError(f"invalid {kind} in {fld}: {value!r}") from None
    return IPv6Network((ip, int(plen)), strict=False)        # ParseCIDR masks the host bits


def _parse_ip6(value: Any, fld: str) -> Optional[IPv6Address]:
    """None for absent/null/"::" (flannel's ip.IsEmpty: "use the default")."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{fld} must be an IPv6 address string, got {json.dumps(value)}")
    try:
        ip = IPv6Address(value)
    except ValueError:
        raise ConfigError(f"invalid IP address in {fld}: {value!r}") from None
    return None if int(ip) == 0 else ip


def _parse_uint(value: Any, fld: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{fld} must be a non-negative integer, got {json.dumps(value)}")
    return value


def _parse_bool(value: Any, fld: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{fld} must be true or false, got {json.dumps(value)}")
    return value


def _load(raw: Union[str, bytes]) -> tuple[str, dict]:
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
        obj = go_json_loads(text)       # keys matched as Go does (lease.json_key)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"invalid JSON in network config: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"invalid JSON in network config: expected an object, got {type(obj).__name__}")
    return text, obj


def _backend(obj: dict) -> tuple[str, dict]:
    """flannel's parseBackendType: absent -> "udp"; present -> its Type, lowercased at lookup."""
    be = json_key(obj, "Backend", _SENTINEL, raw=True)        # a json.RawMessage in flannel
    if be is _SENTINEL:
        return DEFAULT_BACKEND, {}
    if not isinstance(be, dict):
        # Go: Unmarshal(null) into the struct leaves Type "" (-> unknown backend type); anything
        # else that is not an object fails to decode.
        if be is None:
            return "", {}
        raise ConfigError(f"error decoding Backend property of config: Backend must be an object, "
                          f"got {json.dumps(be)}")
    btype = json_key(be, "Type")
    if btype is not None and not isinstance(btype, str):
        raise ConfigError(f"error decoding Backend property of config: Type must be a string, "
                          f"got {json.dumps(btype)}")
    return (btype or "").lower(), be


def _check_backend_type(btype: str) -> None:
    # flannel reports this only when it looks up the backend, after the network checks.
    if btype not in BACKENDS:
        hint = "" if btype else "\"\" (Backend.Type is missing)"
        raise ConfigError(f"unknown backend type: {btype}{hint}")


def _default_subnet_len(network: IPv4Network) -> int:
    if network.prefixlen > MIN_NETWORK_PREFIX:
        raise ConfigError(f"network is too small. Minimum useful network prefix is /{MIN_NETWORK_PREFIX}")
    if network.prefixlen <= 22:
        return DEFAULT_SUBNET_LEN
    return network.prefixlen + 2


def _check_subnet_len(network: IPv4Network, subnet_len: int) -> int:
    if subnet_len == 0:
        return _default_subnet_len(network)
    if subnet_len > MAX_SUBNET_LEN:
        raise ConfigError("SubnetLen must be less than /31")
    if subnet_len < network.prefixlen + 2:
        raise ConfigError("network must be able to accommodate at least four subnets")
    return subnet_len


def _range_end(network: IPv4Network, given: Optional[IPv4Address], default: IPv4Address,
               fld: str, mask: int) -> IPv4Address:
    if given is None:
        return default
    if given not in network:
        raise ConfigError(f"{fld} is not in the range of the Network")
    if int(given) & mask != int(given):
        raise ConfigError(f"{fld} is not on a SubnetLen boundary: {given}")
    return given


def _default_ipv6_subnet_len(network: IPv6Network) -> int:
    if network.prefixlen > MIN_IPV6_NETWORK_PREFIX:
        raise ConfigError("IPv6Network is too small. Minimum useful network prefix is "
                          f"/{MIN_IPV6_NETWORK_PREFIX}")
    if network.prefixlen <= 62:
        return DEFAULT_IPV6_SUBNET_LEN
    return network.prefixlen + 2


def _check_ipv6_subnet_len(network: IPv6Network, subnet_len: int) -> int:
    if subnet_len == 0:
        return _default_ipv6_subnet_len(network)
    if subnet_len > MAX_IPV6_SUBNET_LEN:
        raise ConfigError("SubnetLen must be less than /127")          # flannel's words
    if subnet_len < network.prefixlen + 2:
        raise ConfigError("network must be able to accommodate at least four subnets")
    return subnet_len


def _ipv6_range_end(network: IPv6Network, given: Optional[IPv6Address], default: IPv6Address,
                    fld: str, subnet_len: int) -> IPv6Address:
    if given is None:
        return default
    if given not in network:
        raise ConfigError(f"{fld} is not in the range of the IPv6Network")
    if int(given) & ((1 << (128 - subnet_len)) - 1):
        raise ConfigError(f"{fld} is not on a SubnetLen boundary: {go_ip6_string(given)}")
    return given


def _decode_ipv6_fields(obj: dict) -> tuple:
    """The IPv6 fields as Go decodes them (always: a bad value is a decode error even when
    EnableIPv6 is false)."""
    net_v = json_key(obj, "IPv6Network")
    network = _parse_cidr6(net_v, "IPv6Network") if net_v is not None else None
    return (network, _parse_uint(json_key(obj, "IPv6SubnetLen"), "IPv6SubnetLen"),
            _parse_ip6(json_key(obj, "IPv6SubnetMin"), "IPv6SubnetMin"),
            _parse_ip6(json_key(obj, "IPv6SubnetMax"), "IPv6SubnetMax"))


def _ipv6_fields(network: Optional[IPv6Network], subnet_len: int, smin: Optional[IPv6Address],
                 smax: Optional[IPv6Address]) -> dict:
    """The IPv6 fields checked and defaulted as flannel's CheckNetworkConfig does (when
    EnableIPv6); NetworkConfig keyword arguments."""
    if network is None or (int(network.network_address) == 0 and network.prefixlen == 0):
        raise ConfigError("please define a correct IPv6Network parameter in the flannel config")
    subnet_len = _check_ipv6_subnet_len(network, subnet_len)
    size = 1 << (128 - subnet_len)
    first = IPv6Address(int(network.network_address) + size)     # the first subnet is skipped
    last = IPv6Address(int(network.broadcast_address) + 1 - size)
    smin = _ipv6_range_end(network, smin, first, "IPv6SubnetMin", subnet_len)
    smax = _ipv6_range_end(network, smax, last, "IPv6SubnetMax", subnet_len)
    return {"enable_ipv6": True, "ipv6_network": network, "ipv6_subnet_len": subnet_len,
            "ipv6_subnet_min": smin, "ipv6_subnet_max": smax}


def _ipv4_fields(network: Optional[IPv4Network], subnet_len: int, smin: Optional[IPv4Address],
                 smax: Optional[IPv4Address]) -> dict:
    """The IPv4 fields checked and defaulted as flannel's CheckNetworkConfig does."""
    # ip.IP4Net.Empty(): IP 0 and prefix 0, i.e. absent or "0.0.0.0/0".
    if network is None or (int(network.network_address) == 0 and network.prefixlen == 0):
        raise ConfigError("please define a correct Network parameter in the flannel config")
    subnet_len = _check_subnet_len(network, subnet_len)
    size = 1 << (32 - subnet_len)
    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
    first = IPv4Address(int(network.network_address) + size)     # the first subnet is skipped
    last = IPv4Address(int(network.broadcast_address) + 1 - size)
    smin = _range_end(network, smin, first, "SubnetMin", mask)
    smax = _range_end(network, smax, last, "SubnetMax", mask)
    return {"network": network, "subnet_len": subnet_len, "subnet_min": smin, "subnet_max": smax}


def parse_config(raw: Union[str, bytes]) -> NetworkConfig:
    """Decode and validate a network config; raise ConfigError with flannel's message on failure."""
    text, obj = _load(raw)
    net_v = json_key(obj, "Network")
    network = _parse_cidr(net_v, "Network") if net_v is not None else None
    subnet_len = _parse_uint(json_key(obj, "SubnetLen"), "SubnetLen")
    smin = _parse_ip(json_key(obj, "SubnetMin"), "SubnetMin")
    smax = _parse_ip(json_key(obj, "SubnetMax"), "SubnetMax")
    v4 = _parse_bool(json_key(obj, "EnableIPv4"), "EnableIPv4", True)
    v6 = _parse_bool(json_key(obj, "EnableIPv6"), "EnableIPv6", False)
    v6_fields = _decode_ipv6_fields(obj)
    btype, backend = _backend(obj)

    if not v4 and not v6:
        raise ConfigError("none defined stack: EnableIPv4 and EnableIPv6 are both false")
    if v4:
        fields = _ipv4_fields(network, subnet_len, smin, smax)
    else:   # flannel leaves the IPv4 fields as decoded, unchecked (zero when absent)
        fields = {"network": network or _NO_NETWORK, "subnet_len": subnet_len,
                  "subnet_min": smin or IPv4Address(0), "subnet_max": smax or IPv4Address(0)}
    if v6:
        fields.update(_ipv6_fields(*v6_fields))
    _check_backend_type(btype)
    return NetworkConfig(backend_type=btype, backend=backend, raw=text, enable_ipv4=v4, **fields)


def stack_problem(cfg: NetworkConfig) -> Optional[str]:
    """Why the daemon cannot run this (valid) config's IP families, or None (docs/flannel-compat.md
    §"Dual-stack")."""
    if cfg.ipv6_only and cfg.backend_type == "udp":
        return ("EnableIPv4: false (IPv6-only): the udp backend carries IPv4 only (as flannel's); "
                "use vxlan or host-gw")
    if cfg.enable_ipv6 and cfg.backend_type == "udp":
        return "EnableIPv6: the udp backend carries IPv4 only (as flannel's); use vxlan or host-gw"
    if cfg.enable_ipv6 and cfg.backend_type not in IPV6_BACKENDS:
        return (f"EnableIPv6: the {cfg.backend_type} backend of fastflannel does not program IPv6 "
                f"yet (remove EnableIPv6 or set it to false)")
    return None
