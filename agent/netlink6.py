"""IPv6 over rtnetlink (docs/flannel-compat.md §"Dual-stack"): the reads the interface choice
needs (an interface's IPv6 addresses, the IPv6 default route, `ip -6 route get`) and the routes
the backends' IPv6 halves program (main table, replace/delete/list).

Plain rtnetlink with `struct` (no pyroute2): the messages are packed and parsed here, and sent
over agent/netlink.py's socket (agent/rtnl.py's Requests: its lock, its namespace for tests, its
errors as NetlinkError("<what>: <reason>")).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import netlink, rtnl
from .errors import NetlinkError
from .rtnl import attr as _attr
from .rtnl import attrs as _attrs
from .rtnl import mac_bytes as _mac

IPv6Address = ipaddress.IPv6Address

AF_INET6 = 10
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 20, 22, 24, 25, 26
RTPROT_BOOT, RTN_UNICAST, RTNH_F_ONLINK = 3, 1, 4
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
RT_TABLE_MAIN = 254
IFA_F_SECONDARY, IFA_F_DEPRECATED, IFA_F_PERMANENT = 0x01, 0x20, 0x80   # SECONDARY == TEMPORARY
_IFADDR = struct.Struct("=BBBBI")       # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")    # rtmsg: family, dst_len, src_len, tos, table, proto, scope, type, flags
_ATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class Address6:
    index: int
    ip: IPv6Address
    prefixlen: int
    flags: int


@dataclass(frozen=True)
class Route6:
    dst: ipaddress.IPv6Network
    dst_len: int
    table: int
    oif: int
    gateway: Optional[IPv6Address]
    prefsrc: Optional[IPv6Address]


def _ip6(raw: Optional[bytes]) -> Optional[IPv6Address]:
    return IPv6Address(raw) if raw is not None and len(raw) == 16 else None


Reply = Tuple[int, bytes, int, int]     # (message type, datagram, body offset, message end)


def _query(what: str, kind: int, dump: bool, body: bytes) -> List[Reply]:
    """One get (its one reply) or dump (every reply) request."""
    m = rtnl.msg(kind, 0, body)

    def run(r: rtnl.Requests) -> List[Reply]:
        replies = r.dump(m) if dump else [x for x in [r.get(m)] if x is not None]
        return [(mtype, buf, off + 16, end) for buf, off, mtype, end in replies]
    return netlink._call(what, run)


def _ack(what: str, kind: int, flags: int, body: bytes) -> None:
    netlink._call(what, lambda r: r.ack(rtnl.msg(kind, flags, body)))


def _gone_ok(what: str, kind: int, body: bytes) -> bool:
    """An acknowledged delete; False when there was nothing to delete (ENOENT, ESRCH)."""
    return netlink._ignore((2, 3), what, lambda r: r.ack(rtnl.msg(kind, 0, body)))


def addresses6(index: int = 0) -> List[Address6]:
    """The IPv6 addresses of interface `index` (0: of every interface), in the kernel's order."""
    out: List[Address6] = []
    for mtype, buf, off, end in _query("list IPv6 addresses", RTM_GETADDR, True, _IFADDR.pack(AF_INET6, 0, 0, 0, 0)):
        if mtype != RTM_NEWADDR:
            continue
        family, plen, flags, _scope, idx = _IFADDR.unpack_from(buf, off)
        if family != AF_INET6 or (index and idx != index):
            continue
        a = _attrs(buf, off + _IFADDR.size, end)
        ip = _ip6(a.get(IFA_LOCAL) or a.get(IFA_ADDRESS))
        if ip is not None:
            ext = a.get(IFA_FLAGS)
            out.append(Address6(idx, ip, plen, struct.unpack("=I", ext)[0] if ext and len(ext) == 4 else flags))
    return out


def _route(buf: bytes, off: int, end: int) -> Optional[Route6]:
    family, dst_len, _src, _tos, table, _proto, _scope, _type, _flags = _RTMSG.unpack_from(buf, off)
    if family != AF_INET6:
        return None
    a = _attrs(buf, off + _RTMSG.size, end)
    oif = struct.unpack("=I", a[RTA_OIF])[0] if len(a.get(RTA_OIF, b"")) == 4 else 0
    if len(a.get(RTA_TABLE, b"")) == 4:
        table = struct.unpack("=I", a[RTA_TABLE])[0]
    dst = _ip6(a.get(RTA_DST)) or IPv6Address(0)
    net = ipaddress.IPv6Network((int(dst), dst_len), strict=False)
    return Route6(net, dst_len, table, oif, _ip6(a.get(RTA_GATEWAY)), _ip6(a.get(RTA_PREFSRC)))


def default_route6_oif() -> Optional[int]:
    """The interface index of the first IPv6 default route of the main table (flannel's
    GetDefaultV6GatewayInterface); None when there is none or it names no interface."""
    body = _RTMSG.pack(AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0)
    for mtype, buf, off, end in _query("list IPv6 routes", RTM_GETROUTE, True, body):
        r = _route(buf, off, end) if mtype == RTM_NEWROUTE else None
        if r is not None and r.dst_len == 0 and r.table == RT_TABLE_MAIN:
            return r.oif or None
    return None


def route_get6(dst: IPv6Address) -> Tuple[Optional[int], Optional[IPv6Address]]:
    """`ip -6 route get dst`: (output interface index, preferred source)."""
    body = _RTMSG.pack(AF_INET6, 128, 0, 0, 0, 0, 0, 0, 0) + _ATTR.pack(4 + 16, RTA_DST) + dst.packed
    for mtype, buf, off, end in _query("IPv6 route get", RTM_GETROUTE, False, body):
        r = _route(buf, off, end) if mtype == RTM_NEWROUTE else None
        if r is not None:
            return r.oif or None, r.prefsrc
    return None, None


def route_get6_gateway(dst: IPv6Address) -> Optional[IPv6Address]:
    """The gateway of `ip -6 route get dst`; None when dst is on a link of ours (flannel's
    ip.DirectRouting)."""
    body = _RTMSG.pack(AF_INET6, 128, 0, 0, 0, 0, 0, 0, 0) + _ATTR.pack(4 + 16, RTA_DST) + dst.packed
    for mtype, buf, off, end in _query("IPv6 route get", RTM_GETROUTE, False, body):
        r = _route(buf, off, end) if mtype == RTM_NEWROUTE else None
        if r is not None:
            return r.gateway
    return None


def _route_body(dst: ipaddress.IPv6Network, gateway: Optional[IPv6Address], oif: int, onlink: bool) -> bytes:
    body = _RTMSG.pack(AF_INET6, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST,
                       RTNH_F_ONLINK if onlink else 0)
    body += _ATTR.pack(4 + 16, RTA_DST) + dst.network_address.packed
    if gateway is not None:
        body += _ATTR.pack(4 + 16, RTA_GATEWAY) + gateway.packed
    if oif:
        body += _ATTR.pack(8, RTA_OIF) + struct.pack("=I", oif)
    return body


def route6_replace(dst: ipaddress.IPv6Network, gateway: Optional[IPv6Address], oif: int,
                   onlink: bool = False) -> None:
    """`ip -6 route replace dst [via gateway] dev oif [onlink]` in the main table."""
    _ack(f"replace route {dst} via {gateway}", RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
         _route_body(dst, gateway, oif, onlink))


def route6_delete(dst: ipaddress.IPv6Network, gateway: Optional[IPv6Address] = None, oif: int = 0) -> bool:
    """Delete a main-table IPv6 route; False when there was none (ESRCH)."""
    try:
        _ack(f"delete route {dst} via {gateway}", RTM_DELROUTE, 0, _route_body(dst, gateway, oif, False))
    except NetlinkError as e:
        if e.errno == 3:                        # ESRCH
            return False
        raise
    return True


def routes6(oif: int = 0) -> List[Route6]:
    """The IPv6 routes of the main table (through interface `oif` when given)."""
    body = _RTMSG.pack(AF_INET6, 0, 0, 0, 0, 0, 0, 0, 0)
    out = []
    for mtype, buf, off, end in _query("list IPv6 routes", RTM_GETROUTE, True, body):
        r = _route(buf, off, end) if mtype == RTM_NEWROUTE else None
        if r is not None and r.table == RT_TABLE_MAIN and (not oif or r.oif == oif):
            out.append(r)
    return out


# -- the vxlan backend's IPv6 device and per-peer objects (docs/flannel-compat.md §"Dual-stack") --
AF_BRIDGE = 7
NLM_F_EXCL = 0x200
RTM_NEWLINK, RTM_DELADDR, RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 16, 21, 28, 29, 30
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 1, 3, 7, 15
IFLA_VXLAN_LOCAL6, IFLA_VXLAN_GBP = 17, 23
NLA_F_NESTED = 0x8000
IFA_F_NODAD = 0x02
NDA_DST, NDA_LLADDR = 1, 2
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
_IFINFO = struct.Struct("=BxHiII")      # ifinfomsg: family, type, index, flags, change
_NDMSG = struct.Struct("=BxxxiHBB")     # ndmsg: family, ifindex, state, flags, type


def vxlan6_create(name: str, vni: int, local6: IPv6Address, dev_index: int, port: int = 0,
                  learning: bool = False, gbp: bool = False, mac: Optional[str] = None,
                  mtu: Optional[int] = None) -> None:
    """`ip link add NAME type vxlan id VNI local IPV6 dev DEV [dstport PORT] [no]learning [gbp]`,
    flannel's IPv6 device (backend/vxlan/device.go with vtepAddr = IfaceV6Addr)."""
    data = (_attr(IFLA_VXLAN_ID, struct.pack("=I", vni)) + _attr(IFLA_VXLAN_LINK, struct.pack("=I", dev_index))
            + _attr(IFLA_VXLAN_LOCAL6, local6.packed) + _attr(IFLA_VXLAN_LEARNING, bytes([1 if learning else 0])))
    if port:
        data += _attr(IFLA_VXLAN_PORT, struct.pack("!H", port))
    if gbp:
        data += _attr(IFLA_VXLAN_GBP, b"")
    info = _attr(IFLA_INFO_KIND, b"vxlan\0") + _attr(IFLA_INFO_DATA | NLA_F_NESTED, data)
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
    if mac:
        body += _attr(IFLA_ADDRESS, _mac(mac))
    if mtu:
        body += _attr(IFLA_MTU, struct.pack("=I", mtu))
    body += _attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    _ack(f"create vxlan device {name} (vni {vni}, local {local6})", RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def address6_replace(index: int, ip: IPv6Address, prefixlen: int = 128) -> None:
    """`ip -6 addr replace IP/LEN dev INDEX nodad`."""
    body = (_IFADDR.pack(AF_INET6, prefixlen, IFA_F_NODAD, 0, index) + _attr(IFA_LOCAL, ip.packed)
            + _attr(IFA_ADDRESS, ip.packed))
    _ack(f"add address {ip}/{prefixlen}", RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body)


def address6_delete(index: int, ip: IPv6Address, prefixlen: int) -> None:
    body = _IFADDR.pack(AF_INET6, prefixlen, 0, 0, index) + _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    _ack(f"delete address {ip}/{prefixlen}", RTM_DELADDR, 0, body)


@dataclass(frozen=True)
class Neigh6:
    ip: Optional[IPv6Address]        # NDA_DST: the neighbour, or an FDB entry's remote
    mac: Optional[str]
    state: int


def _neigh_body(family: int, index: int, state: int, flags: int, ip: Optional[IPv6Address],
                mac: Optional[str]) -> bytes:
    body = _NDMSG.pack(family, index, state, flags, 0)
    if ip is not None:
        body += _attr(NDA_DST, ip.packed)
    if mac is not None:
        body += _attr(NDA_LLADDR, _mac(mac))
    return body


def neigh6_replace(index: int, ip: IPv6Address, mac: str) -> None:
    """`ip -6 neigh replace IP lladdr MAC dev INDEX nud permanent`."""
    _ack(f"replace neighbour {ip} lladdr {mac}", RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
         _neigh_body(AF_INET6, index, NUD_PERMANENT, 0, ip, mac))


def fdb6_replace(index: int, mac: str, dst: IPv6Address) -> None:
    """`bridge fdb replace MAC dev INDEX dst IPV6 self permanent`."""
    _ack(f"replace FDB entry {mac} dst {dst}", RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
         _neigh_body(AF_BRIDGE, index, NUD_NOARP | NUD_PERMANENT, NTF_SELF, dst, mac))


def neigh6_delete(index: int, ip: IPv6Address) -> bool:
    return _gone_ok(f"delete neighbour {ip}", RTM_DELNEIGH, _neigh_body(AF_INET6, index, 0, 0, ip, None))


def fdb6_delete(index: int, mac: str, dst: Optional[IPv6Address] = None) -> bool:
    return _gone_ok(f"delete FDB entry {mac}", RTM_DELNEIGH,
                    _neigh_body(AF_BRIDGE, index, NUD_NOARP | NUD_PERMANENT, NTF_SELF, dst, mac))


def _neigh_dump(family: int, index: int) -> List[Neigh6]:
    out = []
    for mtype, buf, off, end in _query("list neighbours", RTM_GETNEIGH, True, _NDMSG.pack(family, 0, 0, 0, 0)):
        if mtype != RTM_NEWNEIGH:
            continue
        fam, idx, state, _flags, _type = _NDMSG.unpack_from(buf, off)
        if fam != family or idx != index:
            continue
        a = _attrs(buf, off + _NDMSG.size, end)
        lladdr = a.get(NDA_LLADDR)
        mac = ":".join(f"{b:02x}" for b in lladdr) if lladdr and len(lladdr) == 6 else None
        out.append(Neigh6(_ip6(a.get(NDA_DST)), mac, state))
    return out


def neigh6_list(index: int) -> List[Neigh6]:
    """The IPv6 neighbours of interface `index`."""
    return _neigh_dump(AF_INET6, index)


def fdb6_list(index: int) -> List[Neigh6]:
    """The FDB entries of interface `index` whose remote is an IPv6 address (others: ip None)."""
    return _neigh_dump(AF_BRIDGE, index)


RTM_GETLINK = 18


def vxlan6_local(index: int) -> Optional[IPv6Address]:
    """The IPv6 local address (IFLA_VXLAN_LOCAL6) of vxlan device `index`, None when it has none."""
    for mtype, buf, off, end in _query(f"get link {index}", RTM_GETLINK, False, _IFINFO.pack(0, 0, index, 0, 0)):
        if mtype != RTM_NEWLINK:
            continue
        link = _attrs(buf, off + _IFINFO.size, end).get(IFLA_LINKINFO)
        if link is None:
            return None
        data = _attrs(link, 0, len(link)).get(IFLA_INFO_DATA)
        return _ip6(_attrs(data, 0, len(data)).get(IFLA_VXLAN_LOCAL6)) if data else None
    return None
