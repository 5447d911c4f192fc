"""Choosing the external interface, as flanneld does (docs/flannel-compat.md §"Interface choice";
flannel's pkg/ipmatch/match.go and pkg/ip/iface.go).

The result names the interface (its index and MTU size the backends' devices), the address on it
(IfaceAddr: what udp binds to, what host-gw insists on) and ExtAddr, the PublicIP written into
the lease (`-public-ip` when given, else IfaceAddr). Dual-stack (EnableIPv6) adds the IPv6
address on the same interface (IfaceV6Addr, the vxlan v6 device's local address) and ExtV6Addr,
the PublicIPv6 (`-public-ipv6` when given, else IfaceV6Addr): see agent/iface6.py.
"""
from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

from . import netlink
from .errors import InterfaceError

log = logging.getLogger("fastflannel.iface")

IPv4Address = ipaddress.IPv4Address
IPv6Address = ipaddress.IPv6Address
LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")
NOT_FOUND = "Failed to find interface to use that matches the interfaces and/or regexes provided"


@dataclass
class ExternalInterface:
    name: str
    index: int
    mtu: int
    iface_addr: IPv4Address
    ext_addr: IPv4Address
    iface_v6_addr: Optional[IPv6Address] = None     # dual-stack only
    ext_v6_addr: Optional[IPv6Address] = None       # the PublicIPv6 of our lease


def _candidate(a: netlink.Address) -> bool:
    # Go's IsGlobalUnicast (private ranges included) or IsLinkLocalUnicast; never deprecated.
    ip = a.ip
    usable = not (ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip == IPv4Address("255.255.255.255"))
    return usable and not a.flags & netlink.IFA_F_DEPRECATED


def _sort_key(a: netlink.Address):
    # global before link-local, permanent before dynamic, non-temporary before temporary;
    # sorted() is stable, so the kernel's order breaks ties.
    return (a.ip in LINK_LOCAL, not a.flags & netlink.IFA_F_PERMANENT, bool(a.flags & netlink.IFA_F_SECONDARY))


def interface_ip4_addr(name: str) -> IPv4Address:
    """flannel's GetInterfaceIP4Addr: the preferred IPv4 address of `name`."""
    cands = sorted((a for a in netlink.address_entries(name) if _candidate(a)), key=_sort_key)
    if not cands:
        raise InterfaceError(f"failed to find IPv4 address for interface {name}")
    return cands[0].ip


def _result(name: str, iface_addr: IPv4Address, public_ip: Optional[str]) -> ExternalInterface:
    info = netlink.link_info(name)
    if not info["mtu"]:
        raise InterfaceError(f"failed to determine MTU for {name} interface")
    ext = IPv4Address(public_ip) if public_ip else iface_addr
    return ExternalInterface(name=name, index=info["index"], mtu=info["mtu"], iface_addr=iface_addr, ext_addr=ext)


def _parse_ip(s: str) -> Optional[IPv4Address]:
    try:
        return IPv4Address(s.strip())
    except ValueError:
        return None


def _by_ip(ip: IPv4Address, public_ip: Optional[str]) -> ExternalInterface:
    name = netlink.iface_of_address(ip)
    if name is None:
        raise InterfaceError(f"no interface with given IP found: {ip}")
    return _result(name, ip, public_ip)


def _by_name_or_ip(spec: str, public_ip: Optional[str]) -> ExternalInterface:
    ip = _parse_ip(spec)
    if ip is not None:
        return _by_ip(ip, public_ip)
    if netlink.link_index(spec) is None:
        raise InterfaceError(f"error looking up interface {spec}: no such network interface")
    return _result(spec, interface_ip4_addr(spec), public_ip)


def compile_regex(pattern: str) -> re.Pattern:
    """An -iface-regex pattern; InterfaceError with flannel's words when it is not one."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InterfaceError(f"unable to compile the regex {pattern!r}: {e}") from None


def _by_regex(pattern: str, public_ip: Optional[str]) -> ExternalInterface:
    rx = compile_regex(pattern)
    links = netlink.all_links()
    # Go's MatchString is a search, unanchored: re.search. Addresses first, in ifindex order.
    for link in links:
        for a in netlink.address_entries(link["name"]):
            if rx.search(str(a.ip)):
                return _result(link["name"], a.ip, public_ip)
    for link in links:
        if rx.search(link["name"]):
            return _result(link["name"], interface_ip4_addr(link["name"]), public_ip)
    names = ", ".join(link["name"] for link in links)
    raise InterfaceError(f"Could not match pattern {pattern} to any of the available network interfaces ({names})")


def _by_can_reach(dst: str, public_ip: Optional[str]) -> ExternalInterface:
    oif, _gw, src = netlink.route_get(dst)
    name = netlink.link_name(oif) if oif else None
    if name is None:
        raise InterfaceError(f"no interface reaches {dst}")
    return _result(name, src if src else interface_ip4_addr(name), public_ip)


def _default(public_ip: Optional[str]) -> ExternalInterface:
    if public_ip:
        # The interface that owns the public IP; NAT setups must also pass -iface (flannel v0.12+).
        ip = _parse_ip(public_ip)
        if ip is None:
            raise InterfaceError(f"invalid public IP address: {public_ip}")
        return _by_ip(ip, public_ip)
    name = netlink.default_route_iface()
    if name is None:
        raise InterfaceError("failed to get default interface: unable to find default route")
    return _result(name, interface_ip4_addr(name), public_ip)


def choose_external_interface(ifaces: Optional[Sequence[str]], iface_regexes: Optional[Sequence[str]],
                              public_ip: Optional[str], can_reach: Optional[str],
                              public_ipv6: Optional[str] = None, ipv6: bool = False,
                              ipv4: bool = True) -> ExternalInterface:
    """flanneld's selection: -iface entries in order, then -iface-regex, then -iface-can-reach;
    with none of them, the owner of -public-ip or the default-route interface. `ipv6`
    (EnableIPv6): the IPv6 addresses on that interface too (agent/iface6.py); without `ipv4`
    (an IPv6-only network) by IPv6 addresses alone, -public-ip unused."""
    from . import iface6
    ifaces, regexes = list(ifaces or []), list(iface_regexes or [])
    if not ipv4:
        return iface6.choose_ipv6_only(ifaces, regexes, can_reach, iface6.Want(public_ipv6))
    if public_ip is not None and _parse_ip(public_ip) is None:
        raise InterfaceError(f"invalid public IP address: {public_ip}")
    v6 = iface6.Want(public_ipv6) if ipv6 else None
    try:
        if not ifaces and not regexes and not can_reach:
            if v6 is not None:
                return iface6.add_ipv6(iface6.default(public_ip, v6), v6, "default", public_ip=public_ip)
            return _default(public_ip)
    except (InterfaceError, netlink.NetlinkError) as e:
        raise InterfaceError(f"Failed to find any valid interface to use: {e}") from None
    attempts: List = ([(_by_name_or_ip, s, "ip" if _parse_ip(s) or iface6.parse6(s) else "name") for s in ifaces]
                      + [(_by_regex, r, "regex") for r in regexes])
    if can_reach:
        attempts.append((_by_can_reach, can_reach, "can-reach"))
    for fn, spec, mode in attempts:
        try:
            if v6 is None:
                return fn(spec, public_ip)
            return iface6.add_ipv6(iface6.lookup(fn, spec, public_ip, mode), v6, mode, spec, public_ip)
        except (InterfaceError, netlink.NetlinkError) as e:
            log.error("Could not find valid interface matching %s: %s", spec, e)
    raise InterfaceError(NOT_FOUND)
