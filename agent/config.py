"""The network config JSON at `<prefix>/config`, parsed and checked the way flannel does
(docs/flannel-compat.md §"Config JSON and defaults").

flannel (`pkg/subnet/config.go`) decodes with Go's encoding/json: keys match case-insensitively,
unknown keys are ignored, a JSON `null` leaves the default in place, and a value of the wrong JSON
type is an error. `CheckNetworkConfig` then fills in the defaults and validates, with the messages
reproduced here word for word (modern lowercase spelling).

Where fastflannel differs, on purpose:
* IPv6 (`EnableIPv6: true`) is refused with a clear message instead of being half supported.
* Messages for JSON type errors name the field ("SubnetLen must be a non-negative integer")
  instead of Go's "cannot unmarshal string into Go struct field Config.SubnetLen of type uint".
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .backends import BACKENDS
from .errors import ConfigError
from .lease import go_json_loads, json_key

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address

DEFAULT_BACKEND = "udp"             # flannel's parseBackendType when Backend is absent (#1221)
DEFAULT_SUBNET_LEN = 24             # bits; for networks of prefix <= 22
MIN_NETWORK_PREFIX = 28             # bits; a smaller network cannot hold four subnets of >= 4 addresses
MAX_SUBNET_LEN = 30                 # bits; "SubnetLen must be less than /31"

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
    btype, backend = _backend(obj)

    if not v4 and not v6:
        raise ConfigError("none defined stack: EnableIPv4 and EnableIPv6 are both false")
    if v6:
        raise ConfigError("EnableIPv6: IPv6 is not supported yet by fastflannel "
                          "(remove EnableIPv6 or set it to false)")
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
    _check_backend_type(btype)
    return NetworkConfig(network=network, subnet_len=subnet_len, subnet_min=smin, subnet_max=smax,
                         backend_type=btype, backend=backend, raw=text)
