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
        rx = v4.compile_regex(pattern)
        matched = [ip for ip in addrs if rx.search(str(ip))]
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


# -- IPv6-only (EnableIPv4 false): flannel's ipmatch with ipStack = ipv6Stack -----------------------

def _v6_result(name: str, addr6: IPv6Address, want: Want) -> v4.ExternalInterface:
    """An interface chosen for IPv6 alone: no IPv4 address is needed (PublicIP 0.0.0.0, as the
    IPv6-only leases flannel writes), PublicIPv6 is -public-ipv6 when given, else `addr6`."""
    info = netlink.link_info(name)
    if not info["mtu"]:
        raise InterfaceError(f"failed to determine MTU for {name} interface")
    none = v4.IPv4Address(0)
    return v4.ExternalInterface(name=name, index=info["index"], mtu=info["mtu"], iface_addr=none,
                                ext_addr=none, iface_v6_addr=addr6, ext_v6_addr=want.ip or addr6)


def _own_or_preferred(name: str, want: Want, pattern: Optional[str] = None) -> IPv6Address:
    """-public-ipv6 when it is on `name`, else the interface's preferred IPv6 address."""
    if want.ip is not None and owner6(want.ip) == name:
        return want.ip
    return interface_ip6_addr(name, pattern)


def _v6_by_spec(spec: str, want: Want) -> v4.ExternalInterface:
    """-iface for IPv6 only: an IPv6 address (its interface) or a name."""
    ip6 = parse6(spec)
    if ip6 is not None:
        name = owner6(ip6)
        if name is None:
            raise InterfaceError(f"error looking up v6 interface {spec}: No interface with given IPv6 found")
        return _v6_result(name, ip6, want)
    if v4._parse_ip(spec) is not None:
        raise InterfaceError(f"-iface {spec} is an IPv4 address; the network is IPv6-only")
    if netlink.link_index(spec) is None:
        raise InterfaceError(f"error looking up interface {spec}: no such network interface")
    return _v6_result(spec, _own_or_preferred(spec, want), want)


def _v6_by_regex(pattern: str, want: Want) -> v4.ExternalInterface:
    """-iface-regex for IPv6 only: the first interface with an IPv6 address it matches, else the
    first whose name it matches (flannel's ipv6Stack loop)."""
    rx = v4.compile_regex(pattern)
    links = netlink.all_links()
    for link in links:
        try:
            addrs = ip6_addrs(link["name"])
        except InterfaceError:
            continue
        matched = [ip for ip in addrs if rx.search(str(ip))]
        if matched:
            return _v6_result(link["name"], matched[0], want)
    for link in links:
        if rx.search(link["name"]):
            return _v6_result(link["name"], _own_or_preferred(link["name"], want), want)
    names = ", ".join(link["name"] for link in links)
    raise InterfaceError(f"Could not match pattern {pattern} to any of the available network interfaces ({names})")


def _v6_by_can_reach(dst: str, want: Want) -> v4.ExternalInterface:
    ip6 = parse6(dst)
    if ip6 is None:
        raise InterfaceError(f"-iface-can-reach {dst} is not an IPv6 address; the network is IPv6-only")
    oif, src = netlink6.route_get6(ip6)
    name = netlink.link_name(oif) if oif else None
    if name is None:
        raise InterfaceError(f"no interface reaches {dst}")
    return _v6_result(name, src or interface_ip6_addr(name), want)


def _v6_default(want: Want) -> v4.ExternalInterface:
    """No -iface* options: the owner of -public-ipv6, else the IPv6 default-route interface."""
    if want.ip is not None:
        name = owner6(want.ip)
        if name is None:
            raise InterfaceError(f"error looking up v6 interface {want.text}: No interface with given IPv6 found")
        return _v6_result(name, want.ip, want)
    oif = netlink6.default_route6_oif()
    name = netlink.link_name(oif) if oif else None
    if name is None:
        raise InterfaceError("failed to get default v6 interface: Unable to find default v6 route")
    return _v6_result(name, interface_ip6_addr(name), want)


def choose_ipv6_only(ifaces: list, regexes: list, can_reach: Optional[str],
                     want: Want) -> v4.ExternalInterface:
    """The interface for an IPv6-only network: the same order as choose_external_interface
    (-iface entries, -iface-regex, -iface-can-reach, else the default), judged by IPv6
    addresses alone, so an interface with no IPv4 address is fine."""
    if not ifaces and not regexes and not can_reach:
        try:
            return _v6_default(want)
        except (InterfaceError, netlink.NetlinkError) as e:
            raise InterfaceError(f"Failed to find any valid interface to use: {e}") from None
    attempts: list = ([(_v6_by_spec, s) for s in ifaces] + [(_v6_by_regex, r) for r in regexes]
                      + ([(_v6_by_can_reach, can_reach)] if can_reach else []))
    for fn, spec in attempts:
        try:
            return fn(spec, want)
        except (InterfaceError, netlink.NetlinkError) as e:
            v4.log.error("Could not find valid interface matching %s: %s", spec, e)
    raise InterfaceError(v4.NOT_FOUND)
