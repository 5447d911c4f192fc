"""IPv6 over rtnetlink (docs/flannel-compat.md §"Dual-stack"): the reads the interface choice
needs (an interface's IPv6 addresses, the IPv6 default route, `ip -6 route get`) and the routes
the backends' IPv6 halves program (main table, replace/delete/list).

Plain rtnetlink with `struct` (no pyroute2): one request, one reply or dump per call. Kept apart
from agent/netlink.py, the IPv4 API the backends program through, on purpose: it needs none of
its state and can be folded into it later without touching its callers (agent/iface.py).
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from . import netlink
from .errors import NetlinkError

IPv6Address = ipaddress.IPv6Address

AF_INET6 = 10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x100, 0x400
RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 20, 22, 24, 25, 26
RTPROT_BOOT, RTN_UNICAST, RTNH_F_ONLINK = 3, 1, 4
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
RT_TABLE_MAIN = 254
IFA_F_SECONDARY, IFA_F_DEPRECATED, IFA_F_PERMANENT = 0x01, 0x20, 0x80   # SECONDARY == TEMPORARY
RECV_BYTES = 64 * 1024
TIMEOUT_S = 5.0                 # a local kernel answers at once; this only bounds a bug

_HDR = struct.Struct("=IHHII")          # nlmsghdr: len, type, flags, seq, pid
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


def _attrs(buf: bytes, off: int, end: int) -> Dict[int, bytes]:
    out: Dict[int, bytes] = {}
    while off + _ATTR.size <= end:
        alen, kind = _ATTR.unpack_from(buf, off)
        if alen < _ATTR.size:
            break
        out[kind & 0x3FFF] = buf[off + _ATTR.size:off + alen]
        off += (alen + 3) & ~3
    return out


def _ip6(raw: Optional[bytes]) -> Optional[IPv6Address]:
    return IPv6Address(raw) if raw is not None and len(raw) == 16 else None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:          # CLONE_NEWNET
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the namespace agent/netlink.py sends to (`set_netns`, for
    tests), else in our own; the thread switches in and back only to create it."""
    def new() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    ns = getattr(netlink, "_netns", None)
    if ns is None:
        return new()
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return new()
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def _exchange(kind: int, flags: int, body: bytes) -> Iterator[Tuple[int, bytes, int, int]]:
    """Send one request; yield (type, buffer, body offset, message end) of each reply message."""
    seq = int.from_bytes(os.urandom(4), "little") or 1
    try:
        sock = _socket()
    except OSError as e:
        raise NetlinkError(f"open rtnetlink socket for IPv6 queries: {e.strerror or e}", e.errno) from None
    with sock as s:
        s.settimeout(TIMEOUT_S)
        s.sendto(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body, (0, 0))
        while True:
            try:
                buf = s.recv(RECV_BYTES)
            except OSError as e:
                raise NetlinkError(f"rtnetlink IPv6 query: {e}") from None
            off = 0
            while off + _HDR.size <= len(buf):
                mlen, mtype, _flags, mseq, _pid = _HDR.unpack_from(buf, off)
                if mlen < _HDR.size or mseq != seq:
                    break
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", buf, off + _HDR.size)[0]
                    if code:
                        raise NetlinkError(f"rtnetlink IPv6 query: {os.strerror(code)}", code)
                    return
                yield mtype, buf, off + _HDR.size, off + mlen
                off += (mlen + 3) & ~3
            if not flags & NLM_F_DUMP:
                return


def addresses6(index: int = 0) -> List[Address6]:
    """The IPv6 addresses of interface `index` (0: of every interface), in the kernel's order."""
    out: List[Address6] = []
    for mtype, buf, off, end in _exchange(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(AF_INET6, 0, 0, 0, 0)):
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
    for mtype, buf, off, end in _exchange(RTM_GETROUTE, NLM_F_DUMP, body):
        r = _route(buf, off, end) if mtype == RTM_NEWROUTE else None
        if r is not None and r.dst_len == 0 and r.table == RT_TABLE_MAIN:
            return r.oif or None
    return None


def route_get6(dst: IPv6Address) -> Tuple[Optional[int], Optional[IPv6Address]]:
    """`ip -6 route get dst`: (output interface index, preferred source)."""
    body = _RTMSG.pack(AF_INET6, 128, 0, 0, 0, 0, 0, 0, 0) + _ATTR.pack(4 + 16, RTA_DST) + dst.packed
    for mtype, buf, off, end in _exchange(RTM_GETROUTE, 0, body):
        r = _route(buf, off, end) if mtype == RTM_NEWROUTE else None
        if r is not None:
            return r.oif or None, r.prefsrc
    return None, None


def route_get6_gateway(dst: IPv6Address) -> Optional[IPv6Address]:
    """The gateway of `ip -6 route get dst`; None when dst is on a link of ours (flannel's
    ip.DirectRouting)."""
    body = _RTMSG.pack(AF_INET6, 128, 0, 0, 0, 0, 0, 0, 0) + _ATTR.pack(4 + 16, RTA_DST) + dst.packed
    for mtype, buf, off, end in _exchange(RTM_GETROUTE, 0, body):
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


def _ack(what: str, kind: int, flags: int, body: bytes) -> None:
    try:
        for _ in _exchange(kind, flags | NLM_F_ACK, body):
            pass
    except NetlinkError as e:
        raise NetlinkError(f"{what}: {e}", e.errno) from None


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
    for mtype, buf, off, end in _exchange(RTM_GETROUTE, NLM_F_DUMP, body):
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


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _mac(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


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


def _gone_ok(what: str, kind: int, body: bytes) -> bool:
    try:
        _ack(what, kind, 0, body)
    except NetlinkError as e:
        if e.errno in (2, 3):                   # ENOENT, ESRCH: nothing to delete
            return False
        raise
    return True


def neigh6_delete(index: int, ip: IPv6Address) -> bool:
    return _gone_ok(f"delete neighbour {ip}", RTM_DELNEIGH, _neigh_body(AF_INET6, index, 0, 0, ip, None))


def fdb6_delete(index: int, mac: str, dst: Optional[IPv6Address] = None) -> bool:
    return _gone_ok(f"delete FDB entry {mac}", RTM_DELNEIGH,
                    _neigh_body(AF_BRIDGE, index, NUD_NOARP | NUD_PERMANENT, NTF_SELF, dst, mac))


def _neigh_dump(family: int, index: int) -> List[Neigh6]:
    out = []
    for mtype, buf, off, end in _exchange(RTM_GETNEIGH, NLM_F_DUMP, _NDMSG.pack(family, 0, 0, 0, 0)):
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
    for mtype, buf, off, end in _exchange(RTM_GETLINK, 0, _IFINFO.pack(0, 0, index, 0, 0)):
        if mtype != RTM_NEWLINK:
            continue
        link = _attrs(buf, off + _IFINFO.size, end).get(IFLA_LINKINFO)
        if link is None:
            return None
        data = _attrs(link, 0, len(link)).get(IFLA_INFO_DATA)
        return _ip6(_attrs(data, 0, len(data)).get(IFLA_VXLAN_LOCAL6)) if data else None
    return None
