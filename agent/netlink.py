"""Kernel networking through rtnetlink: links, addresses, routes, neighbours, FDB, VXLAN devices.

The only module that talks rtnetlink (docs/architecture.md §"Who owns what"), over the raw sockets
of agent/rtnl.py (requests packed with `struct`; links and addresses in agent/rtnl_link.py): no
pyroute2, whose import alone costs ~20 MiB of RSS and ~110 ms (docs/architecture.md §"Scale").
Every function works in the network namespace this process runs in (the daemon is started with
`ip netns exec` in tests and demos), through one lazily opened request socket per process,
guarded by a lock because the daemon calls in from its watch thread and its repair loop.
`set_netns(name)` points the socket at another namespace; tests and tools use it, the daemon does
not. The per-peer hot path uses `send_batch` (many requests per sendmsg) and the filtered dumps.

Every failure is raised as `NetlinkError` naming the operation and the object, with the errno
kept in `.errno` (e.g. errno.ENODEV when a link is missing).
"""
from __future__ import annotations

import errno as _errno
import ipaddress
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import rtnl
from . import rtnl_link as lk
from .errors import NetlinkError

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
IPv4Interface = ipaddress.IPv4Interface
AddrLike = Union[str, IPv4Address]

AF_INET = 2
AF_BRIDGE = 7
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTPROT_BOOT = 3                 # what `ip route` and flannel's netlink library use
RTNH_F_ONLINK = 4
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
IFA_F_SECONDARY = 0x01          # a.k.a. IFA_F_TEMPORARY (IPv6 privacy addresses)
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80
IFF_UP = 0x1
VXLAN_DEFAULT_PORT = 8472       # Linux's default dstport (IANA 4789 is not the kernel default)
RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH = 6, 7, 9


# -- the socket ---------------------------------------------------------------------------------
_lock = threading.RLock()
_req: Optional[rtnl.Requests] = None
_req_pid = 0
_netns: Optional[str] = None


def set_netns(name: Optional[str]) -> None:
    """Send later calls into namespace `name` (None: this process's own). Never creates one."""
    global _netns
    with _lock:
        close()
        _netns = name


def close() -> None:
    global _req
    with _lock:
        if _req is not None and _req_pid == os.getpid():
            _req.close()
        _req = None


def _requests() -> rtnl.Requests:
    global _req, _req_pid
    if _req is None or _req_pid != os.getpid():   # a forked child must not share the socket
        try:
            _req, _req_pid = rtnl.Requests(_netns), os.getpid()
        except OSError as e:
            raise NetlinkError(f"open rtnetlink socket{' in netns ' + _netns if _netns else ''}: "
                               f"{e.strerror or e}", e.errno) from None
    return _req


def _call(what: str, fn: Callable[[rtnl.Requests], Any]) -> Any:
    """Run `fn(socket)` under the lock; turn every failure into NetlinkError(`what`: reason).

    The kernel's refusals come as OSError(errno); our encoders raise ValueError/struct.error
    for input that cannot be encoded (a bad MAC, an out-of-range number). Both are one failed
    request to the caller. A socket error other than a refusal closes the socket (the next call
    opens a new one), so a half-read answer never confuses the next request."""
    with _lock:
        req = _requests()
        try:
            return fn(req)
        except OSError as e:
            if e.errno is None or e.errno in (_errno.ENOBUFS, _errno.EBADF):
                close()
            raise NetlinkError(f"{what}: {e.strerror or e}", e.errno) from None
        except (ValueError, TypeError, struct.error, OverflowError) as e:
            raise NetlinkError(f"{what}: {type(e).__name__}: {e}") from None


def _ignore(codes: Tuple[int, ...], what: str, fn: Callable[[rtnl.Requests], Any]) -> bool:
    """Like _call, but returns False when the kernel answers with one of `codes`."""
    try:
        _call(what, fn)
        return True
    except NetlinkError as e:
        if e.errno in codes:
            return False
        raise


def _ack(what: str, msg_fn: Callable[[], bytes]) -> None:
    _call(what, lambda r: r.ack(msg_fn()))


# -- links --------------------------------------------------------------------------------------
def _get_link(what: str, name: Optional[str] = None, index: int = 0) -> Optional[Dict[str, Any]]:
    try:
        reply = _call(what, lambda r: r.get(lk.link_get(name, index)))
    except NetlinkError as e:
        if e.errno == _errno.ENODEV:
            return None
        raise
    return lk.parse_link(reply[0], reply[1], reply[3]) if reply else None


def link_index(name: str) -> Optional[int]:
    link = _get_link(f"look up link {name}", name=name)
    return link["index"] if link else None


def link_exists(name: str) -> bool:
    return link_index(name) is not None


def _require_index(name: str, op: str) -> int:
    idx = link_index(name)
    if idx is None:
        raise NetlinkError(f"{op} {name}: no such device", _errno.ENODEV)
    return idx


def link_name(index: int) -> Optional[str]:
    link = _get_link(f"get link #{index}", index=index)
    return link["name"] if link else None


def _link_dict(raw: Dict[str, Any]) -> Dict[str, Any]:
    vx = raw["vxlan"]
    if vx is not None:
        vx = dict(vx, local=IPv4Address(vx["local"]) if vx["local"] else None,
                  group=IPv4Address(vx["group"]) if vx["group"] else None,
                  port=vx["port"] or VXLAN_DEFAULT_PORT)
    return {"name": raw["name"], "index": raw["index"], "kind": raw["kind"], "mtu": raw["mtu"] or 0,
            "address": raw["address"], "state": "up" if raw["flags"] & IFF_UP else "down",
            "operstate": raw["operstate"], "vxlan": vx}


def link_info(name: str) -> Dict[str, Any]:
    """{name, index, kind, mtu, address (MAC), state "up"/"down", operstate, vxlan: {id, local,
    group, port, learning, gbp, l2miss, l3miss, link} or None}; NetlinkError(ENODEV) if absent."""
    raw = _get_link(f"get link {name}", name=name)
    if raw is None:
        raise NetlinkError(f"get link {name}: no such device", _errno.ENODEV)
    return _link_dict(raw)


def _link_names(r: rtnl.Requests) -> Dict[int, str]:
    return {d["index"]: d["name"] for d in (lk.parse_link(b, o, e) for b, o, _k, e in r.dump(lk.link_dump()))}


LINK_STATS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors",
              "rx_dropped", "tx_dropped")


def link_stats(name: str) -> Dict[str, int]:
    """The link's kernel counters (IFLA_STATS64): LINK_STATS; NetlinkError(ENODEV) if absent."""
    raw = _get_link(f"get link {name}", name=name)
    if raw is None:
        raise NetlinkError(f"get link {name}: no such device", _errno.ENODEV)
    return dict(zip(LINK_STATS, raw["stats"] or (0,) * len(LINK_STATS)))


def all_links() -> List[Dict[str, Any]]:
    """Every link as link_info() describes it, in ifindex order."""
    msgs = _call("dump links", lambda r: [lk.parse_link(b, o, e) for b, o, _k, e in r.dump(lk.link_dump())])
    return sorted((_link_dict(m) for m in msgs), key=lambda d: d["index"])


def link_set_up(name: str) -> None:
    idx = _require_index(name, "set link up")
    _ack(f"set link {name} up", lambda: lk.link_set(idx, up=True))


def link_set_mtu(name: str, mtu: int) -> None:
    idx = _require_index(name, "set mtu of")
    _ack(f"set mtu {mtu} on {name}", lambda: lk.link_set(idx, mtu=int(mtu)))


def link_set_txqueuelen(name: str, qlen: int) -> None:
    idx = _require_index(name, "set txqueuelen of")
    _ack(f"set txqueuelen {qlen} on {name}", lambda: lk.link_set(idx, txqlen=int(qlen)))


def link_set_address(name: str, mac: str) -> None:
    idx = _require_index(name, "set MAC of")
    _ack(f"set MAC {mac} on {name}", lambda: lk.link_set(idx, mac=mac))


def link_delete(name: str) -> bool:
    """Delete a link; False when there was none."""
    idx = link_index(name)
    if idx is None:
        return False
    return _ignore((_errno.ENODEV,), f"delete link {name}", lambda r: r.ack(lk.link_delete(idx)))


def vxlan_create(name: str, vni: int, local_ip: AddrLike, dev_index: Optional[int], port: int = 0,
                 learning: bool = False, gbp: bool = False, mac: Optional[str] = None,
                 mtu: Optional[int] = None) -> int:
    """`ip link add NAME type vxlan id VNI local IP dev DEV [dstport PORT] [no]learning [gbp]`.

    port 0 leaves the kernel default (8472); TTL 0 / TOS 0 inherit, no l2miss/l3miss, udpcsum at
    the kernel default, as flannel creates it (docs/flannel-compat.md §"vxlan device"). Returns the new ifindex."""
    _ack(f"create vxlan device {name} (vni {vni}, local {local_ip})",
         lambda: lk.vxlan_create(name, int(vni), local_ip, dev_index, int(port), learning, gbp, mac,
                                 int(mtu) if mtu else None))
    return _require_index(name, "create vxlan device")


# -- addresses ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Address:
    iface: IPv4Interface
    flags: int            # IFA_F_*: PERMANENT, DEPRECATED, SECONDARY/TEMPORARY
    scope: int            # 0 universe (global), 253 link, 254 host

    @property
    def ip(self) -> IPv4Address:
        return self.iface.ip


def _addresses(what: str, index: int = 0) -> List[Tuple[int, int, int, int, int]]:
    def dump(r: rtnl.Requests) -> List[Tuple[int, int, int, int, int]]:
        out = []
        for b, o, _k, e in r.dump(lk.addr_dump(index)):
            a = lk.parse_addr(b, o, e)
            if a is not None and (not index or a[0] == index):
                out.append(a)
        return out
    return _call(what, dump)


def address_entries(name: str) -> List[Address]:
    """IPv4 addresses of `name` with their flags, in kernel order."""
    idx = _require_index(name, "list addresses of")
    return [Address(IPv4Interface((ip, plen)), flags, scope)
            for _i, ip, plen, flags, scope in _addresses(f"list addresses of {name}", idx)]


def addresses(name: str) -> List[IPv4Interface]:
    return [a.iface for a in address_entries(name)]


def address_add(name: str, ip: AddrLike, prefixlen: int = 32) -> None:
    idx = _require_index(name, "add address to")
    _ack(f"add address {ip}/{prefixlen} to {name}", lambda: lk.addr_change(True, idx, ip, int(prefixlen)))


def address_delete(name: str, ip: AddrLike, prefixlen: int) -> bool:
    idx = _require_index(name, "delete address from")
    return _ignore((_errno.EADDRNOTAVAIL, _errno.ENOENT), f"delete address {ip}/{prefixlen} from {name}",
                   lambda r: r.ack(lk.addr_change(False, idx, ip, int(prefixlen))))


def ensure_single_address(name: str, ip: AddrLike, prefixlen: int = 32,
                          within: Optional[IPv4Network] = None) -> None:
    """Exactly one address `ip/prefixlen` from inside `within` on `name` (flannel's
    ensureV4AddressOnLink): other addresses inside `within` are removed, others are left alone.
    Without `within`, every other IPv4 address on the link counts as ours and is removed."""
    want = IPv4Interface(f"{ip}/{prefixlen}")
    have = False
    for a in address_entries(name):
        if a.iface == want:
            have = True
        elif within is None or a.ip in within:
            address_delete(name, a.ip, a.iface.network.prefixlen)
    if not have:
        address_add(name, want.ip, want.network.prefixlen)


def iface_of_address(ip: AddrLike) -> Optional[str]:
    """The link carrying IPv4 address `ip`, or None."""
    want = int(IPv4Address(str(ip)))
    for index, addr, _plen, _flags, _scope in _addresses(f"find the interface of {ip}"):
        if addr == want:
            return link_name(index)
    return None


# -- routes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    dst: IPv4Network
    gateway: Optional[IPv4Address]
    oif: Optional[int]
    dev: Optional[str]
    onlink: bool
    type: int             # RTN_UNICAST 1, RTN_BLACKHOLE 6, ...
    proto: int
    scope: int
    prefsrc: Optional[IPv4Address]
    priority: Optional[int]


def _route_from(buf: bytes, off: int, end: int, names: Dict[int, str]) -> Optional[Route]:
    body = off + 16
    fam, plen, _s, _t, _table, proto, scope, rtype, flags = rtnl.RTMSG.unpack_from(buf, body)
    if fam != AF_INET:
        return None
    a = rtnl.attrs(buf, body + rtnl.RTMSG.size, end)
    gw, oif = rtnl.be32(a.get(rtnl.RTA_GATEWAY)), rtnl.u32(a.get(rtnl.RTA_OIF)) or None
    mp = a.get(RTA_MULTIPATH)
    if oif is None and mp and len(mp) >= 8:                    # multipath: the first hop
        nh_len, nh_flags, _hops, oif = struct.unpack_from("=HBBi", mp, 0)
        flags |= nh_flags
        gw = gw or rtnl.be32(rtnl.attrs(mp, 8, nh_len).get(rtnl.RTA_GATEWAY))
    src = rtnl.be32(a.get(RTA_PREFSRC))
    return Route(dst=IPv4Network((rtnl.be32(a.get(rtnl.RTA_DST)) or 0, plen)),
                 gateway=IPv4Address(gw) if gw else None, oif=oif, dev=names.get(oif) if oif else None,
                 onlink=bool(flags & RTNH_F_ONLINK), type=rtype, proto=proto, scope=scope,
                 prefsrc=IPv4Address(src) if src else None,
                 priority=rtnl.u32(a[RTA_PRIORITY]) if RTA_PRIORITY in a else None)


def route_list(dev: Optional[str] = None) -> List[Route]:
    """IPv4 routes of the main table, optionally only those leaving through `dev` (the kernel
    filters: strict dump checking)."""
    idx = _require_index(dev, "list routes of") if dev else 0

    def dump(r: rtnl.Requests) -> List[Route]:
        names = _link_names(r)
        out = [_route_from(b, o, e, names) for b, o, _k, e in r.dump(rtnl.route_dump_request(idx))]
        return [x for x in out if x is not None and (not idx or x.oif == idx)]
    return _call(f"list routes{' of ' + dev if dev else ''}", dump)


def _route_msg(replace: bool, dst: IPv4Network, gateway: Optional[AddrLike], oif: int, onlink: bool,
               blackhole: bool) -> bytes:
    body = rtnl.RTMSG.pack(AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT if replace else 0,
                           rtnl.RT_SCOPE_UNIVERSE if replace else rtnl.RT_SCOPE_NOWHERE,
                           RTN_BLACKHOLE if blackhole else (RTN_UNICAST if replace else 0),
                           RTNH_F_ONLINK if onlink else 0)
    body += rtnl.attr(rtnl.RTA_DST, dst.network_address.packed)
    if gateway is not None:
        body += rtnl.attr(rtnl.RTA_GATEWAY, rtnl.ip4(gateway))
    if oif:
        body += rtnl.U32_ATTR.pack(8, rtnl.RTA_OIF, oif)
    if replace:
        return rtnl.msg(rtnl.RTM_NEWROUTE, rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE, body)
    return rtnl.msg(rtnl.RTM_DELROUTE, 0, body)


def _oif(dev: Union[str, int, None], dst: IPv4Network) -> int:
    if dev is None:
        return 0
    return dev if isinstance(dev, int) else _require_index(dev, f"route {dst} via")


def route_replace(dst: IPv4Network, gateway: Optional[AddrLike] = None, dev: Union[str, int, None] = None,
                  onlink: bool = False, blackhole: bool = False) -> None:
    """`ip route replace DST [via GW] [dev DEV] [onlink]` (or `blackhole DST`), main table, proto
    boot (flannel's), scope global as pyroute2 and flannel's netlink library set it."""
    dst = IPv4Network(str(dst))
    oif = _oif(dev, dst)
    desc = f"replace route {dst}" + (f" via {gateway}" if gateway else "") + (f" dev {dev}" if dev else "")
    _ack(desc, lambda: _route_msg(True, dst, gateway, oif, onlink, blackhole))


def route_delete(dst: IPv4Network, gateway: Optional[AddrLike] = None,
                 dev: Union[str, int, None] = None, blackhole: bool = False) -> bool:
    """Delete the matching route; False when there was none (or `dev` is gone)."""
    dst = IPv4Network(str(dst))
    if isinstance(dev, str) and link_index(dev) is None:
        return False
    oif = _oif(dev, dst)
    desc = f"delete route {dst}" + (f" via {gateway}" if gateway else "") + (f" dev {dev}" if dev else "")
    return _ignore((_errno.ESRCH, _errno.ENOENT), desc,
                   lambda r: r.ack(_route_msg(False, dst, gateway, oif, False, blackhole)))


def route_get(dst_ip: AddrLike) -> Tuple[Optional[int], Optional[IPv4Address], Optional[IPv4Address]]:
    """`ip route get DST`: (oif index, gateway or None when on-link, preferred source)."""
    req = rtnl.msg(rtnl.RTM_GETROUTE, 0, rtnl.RTMSG.pack(AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
                   + rtnl.attr(rtnl.RTA_DST, rtnl.ip4(dst_ip)))
    reply = _call(f"route get {dst_ip}", lambda r: r.get(req))
    r = _route_from(reply[0], reply[1], reply[3], {}) if reply else None
    if r is None:
        raise NetlinkError(f"route get {dst_ip}: no route", _errno.ENETUNREACH)
    return r.oif, r.gateway, r.prefsrc


def default_route_iface() -> Optional[str]:
    """The link of the first IPv4 default route in the main table (flannel's
    GetDefaultGatewayInterface), or None."""
    for r in route_list():
        if r.dst.prefixlen == 0 and r.oif:
            return r.dev or link_name(r.oif)
    return None


# -- neighbours and FDB -------------------------------------------------------------------------
@dataclass(frozen=True)
class Neighbour:
    ip: IPv4Address
    mac: Optional[str]
    state: int            # NUD_* bits; NUD_PERMANENT = 0x80

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: Optional[IPv4Address]
    state: int
    flags: int            # NTF_SELF = 0x02

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


def neigh_replace(ip: AddrLike, mac: str, dev: str) -> None:
    """`ip neigh replace IP lladdr MAC dev DEV nud permanent`."""
    idx = _require_index(dev, "replace neighbour on")
    _ack(f"replace neighbour {ip} lladdr {mac} dev {dev}", lambda: rtnl.neigh_replace(ip, mac, idx))


def neigh_delete(ip: AddrLike, dev: str) -> bool:
    idx = link_index(dev)
    if idx is None:
        return False
    return _ignore((_errno.ENOENT, _errno.ESRCH), f"delete neighbour {ip} dev {dev}",
                   lambda r: r.ack(rtnl.neigh_delete(ip, idx)))


def neigh_list(dev: str) -> List[Neighbour]:
    idx = _require_index(dev, "list neighbours of")
    msgs = _call(f"list neighbours of {dev}", lambda r: rtnl.dump_neighbours(r, AF_INET, idx))
    return [Neighbour(IPv4Address(m.dst), m.mac, m.state) for m in msgs if m.dst is not None]


def fdb_replace(mac: str, dev: str, dst_ip: AddrLike) -> None:
    """`bridge fdb replace MAC dev DEV dst IP self permanent` (AF_BRIDGE, NTF_SELF)."""
    idx = _require_index(dev, "replace FDB entry on")
    _ack(f"replace FDB entry {mac} dst {dst_ip} dev {dev}", lambda: rtnl.fdb_replace(mac, idx, dst_ip))


def fdb_delete(mac: str, dev: str, dst_ip: Optional[AddrLike] = None) -> bool:
    """Delete the FDB entry for MAC (only the remote `dst_ip` when given); False if absent."""
    idx = link_index(dev)
    if idx is None:
        return False
    return _ignore((_errno.ENOENT, _errno.ESRCH), f"delete FDB entry {mac} dev {dev}",
                   lambda r: r.ack(rtnl.fdb_delete(mac, idx, dst_ip)))


def fdb_list(dev: str) -> List[FdbEntry]:
    idx = _require_index(dev, "list FDB of")
    msgs = _call(f"list FDB of {dev}", lambda r: rtnl.dump_neighbours(r, AF_BRIDGE, idx))
    return [FdbEntry(m.mac, IPv4Address(m.dst) if m.dst is not None else None, m.state, m.flags)
            for m in msgs if m.mac]


# -- many per-peer objects at once (agent/rtnl.py) -----------------------------------------------
# The per-peer hot path of the kernel backends: requests packed by rtnl's builders
# (rtnl.route_replace, rtnl.neigh_replace, rtnl.fdb_replace, ... by ifindex) and sent many per
# sendmsg, and dumps the kernel filters to one device. docs/architecture.md §"Scale".
def send_batch(msgs: List[bytes]) -> List[Tuple[int, int]]:
    """Send rtnl-built requests in as few sendmsg calls as fit; return (index, errno) of each one
    the kernel refused (the others were applied, in order)."""
    if not msgs:
        return []
    return _call(f"send {len(msgs)} rtnetlink requests", lambda r: r.send(msgs))


def dump_routes(oif: int = 0) -> List[rtnl.RouteMsg]:
    """Main-table IPv4 routes (rtnl.RouteMsg), filtered by the kernel to output device `oif`."""
    return _call(f"dump routes of #{oif}", lambda r: rtnl.dump_routes(r, oif=oif))


def dump_neighbours(ifindex: int, fdb: bool = False) -> List[rtnl.NeighMsg]:
    """Neighbours (AF_INET) or FDB entries (AF_BRIDGE) of one device as rtnl.NeighMsg."""
    family = AF_BRIDGE if fdb else AF_INET
    return _call(f"dump {'FDB' if fdb else 'neighbours'} of #{ifindex}",
                 lambda r: rtnl.dump_neighbours(r, family, ifindex))


def kernel_watch(on_changes: Optional[Callable[[Any], None]] = None):
    """A kernelwatch.KernelWatch in this module's namespace (see set_netns): read with poll(), or
    start() its thread when `on_changes` is given."""
    from .kernelwatch import KernelWatch
    try:
        w = KernelWatch(on_changes or (lambda _c: None), netns=_netns)
        return w.start() if on_changes else w
    except OSError as e:
        raise NetlinkError(f"subscribe to rtnetlink notifications: {e.strerror or e}", e.errno) from None
