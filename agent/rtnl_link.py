"""Links and addresses in raw rtnetlink (ifinfomsg, ifaddrmsg, the VXLAN link info): the requests
agent/netlink.py sends and the parsers of what the kernel answers. Layouts: linux/rtnetlink.h,
linux/if_link.h, linux/if_addr.h; the VXLAN attributes flannel sets: docs/flannel-compat.md
§"vxlan device".
"""
from __future__ import annotations

import socket
import struct

from . import rtnl

IFINFOMSG = struct.Struct("=BxHiII")     # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")      # family, prefixlen, flags, scope, index

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_TXQLEN, IFLA_OPERSTATE, IFLA_LINKINFO = 1, 3, 4, 13, 16, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_STATS64 = 23
# struct rtnl_link_stats64 starts with these u64 counters, in this order (linux/if_link.h)
STATS64_HEAD = struct.Struct("=8Q")
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_L2MISS, IFLA_VXLAN_L3MISS, IFLA_VXLAN_PORT, IFLA_VXLAN_GBP = 7, 13, 14, 15, 23
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 18, 20, 22
NLM_F_EXCL = 0x200
IFF_UP = 0x1
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def link_get(name: str | None = None, index: int = 0) -> bytes:
    body = _ifinfo(index)
    if name is not None:
        body += rtnl.attr(IFLA_IFNAME, name.encode() + b"\0")
    return rtnl.msg(RTM_GETLINK, 0, body)


def link_dump() -> bytes:
    return rtnl.msg(RTM_GETLINK, 0, _ifinfo())


def link_set(index: int, mtu: int | None = None, txqlen: int | None = None, mac: str | None = None,
             up: bool = False) -> bytes:
    body = _ifinfo(index, IFF_UP if up else 0, IFF_UP if up else 0)
    if mtu is not None:
        body += rtnl.U32_ATTR.pack(8, IFLA_MTU, mtu)
    if txqlen is not None:
        body += rtnl.U32_ATTR.pack(8, IFLA_TXQLEN, txqlen)
    if mac is not None:
        body += rtnl.attr(IFLA_ADDRESS, rtnl.mac_bytes(mac))
    return rtnl.msg(rtnl.RTM_NEWLINK, 0, body)


def link_delete(index: int) -> bytes:
    return rtnl.msg(rtnl.RTM_DELLINK, 0, _ifinfo(index))


def vxlan_create(name: str, vni: int, local: object, dev_index: int | None, port: int, learning: bool,
                 gbp: bool, mac: str | None, mtu: int | None) -> bytes:
    """`ip link add NAME [address MAC] [mtu MTU] type vxlan id VNI local IP [dev DEV] [dstport PORT]
    [no]learning [gbp]`; nothing else, so TTL, TOS, checksums and misses keep the kernel's defaults."""
    data = rtnl.U32_ATTR.pack(8, IFLA_VXLAN_ID, vni) + rtnl.attr(IFLA_VXLAN_LOCAL, rtnl.ip4(local))
    data += rtnl.attr(IFLA_VXLAN_LEARNING, bytes([1 if learning else 0]))
    if dev_index:
        data += rtnl.U32_ATTR.pack(8, IFLA_VXLAN_LINK, dev_index)
    if port:
        data += rtnl.attr(IFLA_VXLAN_PORT, struct.pack(">H", port))
    if gbp:
        data += rtnl.attr(IFLA_VXLAN_GBP, b"")
    info = rtnl.attr(IFLA_INFO_KIND, b"vxlan") + rtnl.attr(IFLA_INFO_DATA, data)
    body = _ifinfo() + rtnl.attr(IFLA_IFNAME, name.encode() + b"\0") + rtnl.attr(IFLA_LINKINFO, info)
    if mac:
        body += rtnl.attr(IFLA_ADDRESS, rtnl.mac_bytes(mac))
    if mtu:
        body += rtnl.U32_ATTR.pack(8, IFLA_MTU, mtu)
    return rtnl.msg(rtnl.RTM_NEWLINK, rtnl.NLM_F_CREATE | NLM_F_EXCL, body)


def _vxlan(data: dict[int, bytes]) -> dict:
    local, group = rtnl.be32(data.get(IFLA_VXLAN_LOCAL)), rtnl.be32(data.get(IFLA_VXLAN_GROUP))
    port = data.get(IFLA_VXLAN_PORT)

    def flag(k: int) -> bool:
        return bool(data.get(k, b"\0")[:1] != b"\0")
    return {"id": rtnl.u32(data.get(IFLA_VXLAN_ID)), "local": local or None, "group": group or None,
            "port": struct.unpack(">H", port)[0] if port and len(port) == 2 else 0,
            "learning": flag(IFLA_VXLAN_LEARNING), "gbp": IFLA_VXLAN_GBP in data,
            "l2miss": flag(IFLA_VXLAN_L2MISS), "l3miss": flag(IFLA_VXLAN_L3MISS),
            "link": rtnl.u32(data.get(IFLA_VXLAN_LINK)) or None}


def parse_link(buf: bytes, off: int, end: int) -> dict:
    """{name, index, kind, mtu, address, flags, operstate, vxlan: raw VXLAN attributes or None}."""
    _fam, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, off + 16)
    a = rtnl.attrs(buf, off + 16 + IFINFOMSG.size, end)
    kind, vx = None, None
    info = a.get(IFLA_LINKINFO)
    if info is not None:
        ia = rtnl.attrs(info, 0, len(info))
        kind = ia[IFLA_INFO_KIND].rstrip(b"\0").decode() if IFLA_INFO_KIND in ia else None
        if kind == "vxlan" and IFLA_INFO_DATA in ia:
            vx = _vxlan(rtnl.attrs(ia[IFLA_INFO_DATA], 0, len(ia[IFLA_INFO_DATA])))
    mac = a.get(IFLA_ADDRESS)
    op = a.get(IFLA_OPERSTATE, b"\0")[0]
    st = a.get(IFLA_STATS64)
    return {"name": a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"), "index": index,
            "kind": kind, "mtu": rtnl.u32(a.get(IFLA_MTU)),
            "address": ":".join(f"{x:02x}" for x in mac) if mac and len(mac) == 6 else None,
            "flags": flags, "operstate": OPERSTATES[op] if op < len(OPERSTATES) else str(op), "vxlan": vx,
            "stats": STATS64_HEAD.unpack_from(st) if st and len(st) >= STATS64_HEAD.size else None}


def addr_dump(index: int = 0) -> bytes:
    return rtnl.msg(RTM_GETADDR, 0, IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, index))


def addr_change(add: bool, index: int, ip: object, prefixlen: int) -> bytes:
    """`ip addr add|del IP/PREFIXLEN dev INDEX` (IPv4, no peer: local = address)."""
    raw = rtnl.ip4(ip)
    body = IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, 0, index)
    body += rtnl.attr(IFA_LOCAL, raw) + rtnl.attr(IFA_ADDRESS, raw)
    if add:
        return rtnl.msg(RTM_NEWADDR, rtnl.NLM_F_CREATE | NLM_F_EXCL, body)
    return rtnl.msg(rtnl.RTM_DELADDR, 0, body)


def parse_addr(buf: bytes, off: int, end: int) -> tuple[int, int, int, int, int] | None:
    """(index, IPv4 as int, prefixlen, flags, scope) of an IPv4 address message."""
    fam, plen, flags, scope, index = IFADDRMSG.unpack_from(buf, off + 16)
    if fam != socket.AF_INET:
        return None
    a = rtnl.attrs(buf, off + 16 + IFADDRMSG.size, end)
    ip = rtnl.be32(a.get(IFA_LOCAL)) or rtnl.be32(a.get(IFA_ADDRESS))
    if ip is None:
        return None
    if IFA_FLAGS in a:
        flags = rtnl.u32(a[IFA_FLAGS])
    return index, ip, plen, flags, scope
