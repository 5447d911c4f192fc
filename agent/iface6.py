"""The IPv6 half of the interface choice (EnableIPv6), as flannel's ipmatch.LookupExtIface does
it for a dual-stack network (docs/flannel-compat.md §"Dual-stack"):

* the interface is chosen as for IPv4 (agent/iface.py); `-iface <IPv6 address>` and
  `-iface-can-reach <IPv6 address>` select the interface holding / routing to it;
* IfaceV6Addr is `-public-ipv6` when that address is on the interface, else the interface's first
  global IPv6 address (link-local ones last; flannel's GetInterfaceIP6Addrs), or with
  `-iface-regex` its first IPv6 address the regex matches;
* without `-iface*` options: the IPv6 default route must leave by the same interface as the IPv4
  one ("v6 default route interface X must be the same with v4 default route interface Y"), and
  with `-public-ip`/`-iface <ip>` a `-public-ipv6` on another interface is refused ("v6 interface
  X must be the same with v4 interface Y");
* ExtV6Addr, the lease's PublicIPv6, is `-public-ipv6` when given, else IfaceV6Addr.

Where flannel leaves the IPv6 address empty (`-iface <IPv4 address>` or `-iface-can-reach` without
`-public-ipv6`: no PublicIPv6 in the lease although it takes an IPv6 subnet) or the IPv4 one
(`-public-ipv6` alone: PublicIP 0.0.0.0), fastflannel takes the missing one from the interface.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Callable, Optional

from . import iface as v4
from . import netlink, netlink6
from .errors import InterfaceError

IPv6Address = ipaddress.IPv6Address
LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")


def parse6(text: Optional[str]) -> Optional[IPv6Address]:
    try:
        return IPv6Address(text.strip()) if text else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Want:
    """-public-ipv6, checked."""
    text: Optional[str]

    def __post_init__(self) -> None:
        if self.text and parse6(self.text) is None:
            raise InterfaceError(f"invalid public IPv6 address: {self.text}")

    @property
    def ip(self) -> Optional[IPv6Address]:
        return parse6(self.text)


def _usable(a: netlink6.Address6) -> bool:
    # Go's IsGlobalUnicast (ULA included) or IsLinkLocalUnicast; never a deprecated address.
    ip = a.ip
    return not (ip.is_loopback or ip.is_multicast or ip.is_unspecified) and not a.flags & netlink6.IFA_F_DEPRECATED


def ip6_addrs(name: str) -> list:
    """The usable IPv6 addresses of `name`, global ones first, each group in the kernel's order."""
    index = netlink.link_index(name)
    if index is None:
        raise InterfaceError(f"error looking up interface {name}: no such network interface")
    cands = [a.ip for a in netlink6.addresses6(index) if _usable(a)]
    return sorted(cands, key=lambda ip: ip in LINK_LOCAL6)


def interface_ip6_addr(name: str, pattern: Optional[str] = None) -> IPv6Address:
    """The preferred IPv6 address of `name` (with `pattern`: the first one it matches, if any)."""
    addrs = ip6_addrs(name)
    if not addrs:
        raise InterfaceError(f"failed to find IPv6 address for interface {name}")
    if pattern is not None:
        matched = [ip for ip in addrs if re.search(pattern, str(ip))]
        return matched[0] if matched else addrs[0]
    return addrs[0]


def owner6(ip: IPv6Address) -> Optional[str]:
    """The interface holding IPv6 address `ip` (flannel's GetInterfaceByIP6)."""
    for a in netlink6.addresses6():
        if a.ip == ip:
            return netlink.link_name(a.index)
    return None


def _by_name(name: str, public_ip: Optional[str]) -> v4.ExternalInterface:
    return v4._result(name, v4.interface_ip4_addr(name), public_ip)


def default(public_ip: Optional[str], want: Want) -> v4.ExternalInterface:
    """No -iface* options: the owner of -public-ip, else of -public-ipv6, else the IPv4
    default-route interface."""
    if public_ip or want.ip is None:
        return v4._default(public_ip)
    name = owner6(want.ip)
    if name is None:
        raise InterfaceError(f"error looking up v6 interface {want.text}: No interface with given IPv6 found")
    return _by_name(name, public_ip)


def lookup(fn: Callable[[str, Optional[str]], v4.ExternalInterface], spec: str, public_ip: Optional[str],
           mode: str) -> v4.ExternalInterface:
    """One -iface / -iface-regex / -iface-can-reach attempt; an IPv6 address in -iface or
    -iface-can-reach picks its interface here, with IfaceV6Addr set."""
    ip6 = parse6(spec)
    if ip6 is None or mode not in ("ip", "can-reach"):
        return fn(spec, public_ip)
    if mode == "ip":
        name = owner6(ip6)
        if name is None:
            raise InterfaceError(f"error looking up v6 interface {spec}: No interface with given IPv6 found")
        return dataclasses.replace(_by_name(name, public_ip), iface_v6_addr=ip6)
    oif, src = netlink6.route_get6(ip6)
    name = netlink.link_name(oif) if oif else None
    if name is None:
        raise InterfaceError(f"no interface reaches {spec}")
    return dataclasses.replace(_by_name(name, public_ip), iface_v6_addr=src or interface_ip6_addr(name))


def _check_default_route6(name: str) -> None:
    oif = netlink6.default_route6_oif()
    if oif is None:
        raise InterfaceError("failed to get default v6 interface: Unable to find default v6 route")
    name6 = netlink.link_name(oif)
    if name6 != name:
        raise InterfaceError(f"v6 default route interface {name6} must be the same with v4 default "
                             f"route interface {name}")


def add_ipv6(ext: v4.ExternalInterface, want: Want, mode: str, spec: Optional[str] = None,
             public_ip: Optional[str] = None) -> v4.ExternalInterface:
    """`ext` with IfaceV6Addr and ExtV6Addr filled in (see the module's rules)."""
    addr6 = ext.iface_v6_addr
    if want.ip is not None:
        owner = owner6(want.ip)
        if owner is not None and owner != ext.name and mode in ("default", "ip"):
            raise InterfaceError(f"v6 interface {owner} must be the same with v4 interface {ext.name}")
        if owner == ext.name:
            addr6 = want.ip
    elif mode == "default" and not public_ip:
        _check_default_route6(ext.name)
    if addr6 is None:
        addr6 = interface_ip6_addr(ext.name, spec if mode == "regex" else None)
    return dataclasses.replace(ext, iface_v6_addr=addr6, ext_v6_addr=want.ip or addr6)
