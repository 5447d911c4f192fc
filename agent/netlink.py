"""Kernel networking through rtnetlink: links, addresses, routes, neighbours, FDB, VXLAN devices.

The only module that imports pyroute2 (docs/architecture.md §"Who owns what"). Every function
works in the network namespace this process runs in (the daemon is started with `ip netns exec`
in tests and demos), through one lazily opened IPRoute handle per process, guarded by a lock
because the daemon calls in from its watch thread and its repair loop. `set_netns(name)` points
the handle at another namespace; tests and tools use it, the daemon does not.

Every failure is raised as `NetlinkError` naming the operation and the object, with the errno
kept in `.errno` (e.g. errno.ENODEV when a link is missing).
"""
from __future__ import annotations

import errno as _errno
import ipaddress
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrNetlinkError

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


# -- the handle ---------------------------------------------------------------------------------
_lock = threading.RLock()
_ipr: Optional[IPRoute] = None
_ipr_pid = 0
_netns: Optional[str] = None


def set_netns(name: Optional[str]) -> None:
    """Send later calls into namespace `name` (None: this process's own). Never creates one."""
    global _netns
    with _lock:
        close()
        close_raw()
        _netns = name


def close() -> None:
    global _ipr
    with _lock:
        if _ipr is not None and _ipr_pid == os.getpid():
            try:
                _ipr.close()
            except Exception:  # closing a broken socket must not mask the original problem
                pass
        _ipr = None


def _handle() -> IPRoute:
    global _ipr, _ipr_pid
    if _ipr is None or _ipr_pid != os.getpid():   # a forked child must not share the socket
        try:
            # groups=0: a request-only socket. pyroute2 subscribes to link/address/route events
            # by default; unread, they would fill the receive buffer of a long-running daemon.
            _ipr = IPRoute(netns=_netns, flags=0, groups=0) if _netns else IPRoute(groups=0)
        except Exception as e:  # pyroute2 may raise anything here (see _call)
            raise NetlinkError(f"open rtnetlink socket{' in netns ' + _netns if _netns else ''}: {_reason(e)}",
                               getattr(e, "errno", None) or getattr(e, "code", None)) from None
        _ipr_pid = os.getpid()
    return _ipr


def _reason(e: BaseException) -> str:
    if isinstance(e, _PyrNetlinkError):
        return os.strerror(e.code) if e.code else str(e)
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return f"{type(e).__name__}: {e}"


def _call(what: str, fn: Callable[[IPRoute], Any]) -> Any:
    """Run `fn(handle)` under the lock; turn every failure into NetlinkError(`what`: reason).

    Besides the kernel's refusals (pyroute2's NetlinkError, OSError), pyroute2 encodes requests
    lazily and lets its encoders' errors out as they come: ValueError for a bad MAC ("invalid
    literal for int() with base 16"), struct.error for an out-of-range number, TypeError, ...
    All of them are one failed request to the caller."""
    with _lock:
        ipr = _handle()
        try:
            return fn(ipr)
        except _PyrNetlinkError as e:
            raise NetlinkError(f"{what}: {_reason(e)}", e.code) from None
        except OSError as e:
            raise NetlinkError(f"{what}: {_reason(e)}", e.errno) from None
        except Exception as e:  # pyroute2's encoders: see above
            raise NetlinkError(f"{what}: {_reason(e)}") from None


def _ignore(codes: Tuple[int, ...], what: str, fn: Callable[[IPRoute], Any]) -> bool:
    """Like _call, but returns False when the kernel answers with one of `codes`."""
    try:
        _call(what, fn)
        return True
    except NetlinkError as e:
        if e.errno in codes:
            return False
        raise


# -- links --------------------------------------------------------------------------------------
def link_index(name: str) -> Optional[int]:
    found = _call(f"look up link {name}", lambda i: i.link_lookup(ifname=name))
    return found[0] if found else None


def link_exists(name: str) -> bool:
    return link_index(name) is not None


def _require_index(name: str, op: str) -> int:
    idx = link_index(name)
    if idx is None:
        raise NetlinkError(f"{op} {name}: no such device", _errno.ENODEV)
    return idx


def link_name(index: int) -> Optional[str]:
    try:
        msgs = _call(f"get link #{index}", lambda i: i.link("get", index=index))
    except NetlinkError as e:
        if e.errno == _errno.ENODEV:
            return None
        raise
    return msgs[0].get_attr("IFLA_IFNAME") if msgs else None


def _vxlan_attrs(data) -> Dict[str, Any]:
    local = data.get_attr("IFLA_VXLAN_LOCAL")
    group = data.get_attr("IFLA_VXLAN_GROUP")
    return {
        "id": data.get_attr("IFLA_VXLAN_ID"),
        "local": IPv4Address(local) if local else None,
        "group": IPv4Address(group) if group else None,
        "port": data.get_attr("IFLA_VXLAN_PORT") or VXLAN_DEFAULT_PORT,
        "learning": bool(data.get_attr("IFLA_VXLAN_LEARNING")),
        "gbp": data.get_attr("IFLA_VXLAN_GBP") is not None,   # a flag attribute: present or not
        "l2miss": bool(data.get_attr("IFLA_VXLAN_L2MISS")),
        "l3miss": bool(data.get_attr("IFLA_VXLAN_L3MISS")),
        "link": data.get_attr("IFLA_VXLAN_LINK") or None,
    }


def _link_dict(msg) -> Dict[str, Any]:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    mac = msg.get_attr("IFLA_ADDRESS")
    return {
        "name": msg.get_attr("IFLA_IFNAME"),
        "index": msg["index"],
        "kind": kind,
        "mtu": msg.get_attr("IFLA_MTU") or 0,
        "address": mac.lower() if mac else None,
        "state": "up" if msg["flags"] & IFF_UP else "down",
        "operstate": msg.get_attr("IFLA_OPERSTATE"),
        "vxlan": _vxlan_attrs(data) if kind == "vxlan" and data is not None else None,
    }


def link_info(name: str) -> Dict[str, Any]:
    """{name, index, kind, mtu, address (MAC), state "up"/"down", operstate, vxlan: {id, local,
    group, port, learning, gbp, l2miss, l3miss, link} or None}; NetlinkError(ENODEV) if absent."""
    msgs = _call(f"get link {name}", lambda i: i.link("get", ifname=name))
    if not msgs:
        raise NetlinkError(f"get link {name}: no such device", _errno.ENODEV)
    return _link_dict(msgs[0])


def all_links() -> List[Dict[str, Any]]:
    """Every link as link_info() describes it, in ifindex order."""
    msgs = _call("dump links", lambda i: i.link("dump"))
    return sorted((_link_dict(m) for m in msgs), key=lambda d: d["index"])


def link_set_up(name: str) -> None:
    idx = _require_index(name, "set link up")
    _call(f"set link {name} up", lambda i: i.link("set", index=idx, state="up"))


def link_set_mtu(name: str, mtu: int) -> None:
    idx = _require_index(name, "set mtu of")
    _call(f"set mtu {mtu} on {name}", lambda i: i.link("set", index=idx, mtu=int(mtu)))


def link_set_txqueuelen(name: str, qlen: int) -> None:
    idx = _require_index(name, "set txqueuelen of")
    _call(f"set txqueuelen {qlen} on {name}", lambda i: i.link("set", index=idx, txqlen=int(qlen)))


def link_set_address(name: str, mac: str) -> None:
    idx = _require_index(name, "set MAC of")
    _call(f"set MAC {mac} on {name}", lambda i: i.link("set", index=idx, address=mac))


def link_delete(name: str) -> bool:
    """Delete a link; False when there was none."""
    idx = link_index(name)
    if idx is None:
        return False
    return _ignore((_errno.ENODEV,), f"delete link {name}", lambda i: i.link("del", index=idx))


def vxlan_create(name: str, vni: int, local_ip: AddrLike, dev_index: Optional[int], port: int = 0,
                 learning: bool = False, gbp: bool = False, mac: Optional[str] = None,
                 mtu: Optional[int] = None) -> int:
    """`ip link add NAME type vxlan id VNI local IP dev DEV [dstport PORT] [no]learning [gbp]`.

    port 0 leaves the kernel default (8472); TTL 0 / TOS 0 inherit, no l2miss/l3miss, udpcsum at
    the kernel default, as flannel creates it (docs/flannel-compat.md §"vxlan device"). Returns the new ifindex."""
    kw: Dict[str, Any] = dict(ifname=name, kind="vxlan", vxlan_id=int(vni), vxlan_local=str(local_ip),
                              vxlan_learning=1 if learning else 0)
    if dev_index:
        kw["vxlan_link"] = int(dev_index)
    if port:
        kw["vxlan_port"] = int(port)
    if gbp:
        kw["vxlan_gbp"] = True
    if mac:
        kw["address"] = mac
    if mtu:
        kw["mtu"] = int(mtu)
    _call(f"create vxlan device {name} (vni {vni}, local {local_ip})", lambda i: i.link("add", **kw))
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


def address_entries(name: str) -> List[Address]:
    """IPv4 addresses of `name` with their flags, in kernel order."""
    idx = _require_index(name, "list addresses of")
    msgs = _call(f"list addresses of {name}", lambda i: i.addr("dump", family=AF_INET, index=idx))
    out = []
    for m in msgs:
        if m["family"] != AF_INET or m["index"] != idx:
            continue
        ip = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
        flags = m.get_attr("IFA_FLAGS")
        out.append(Address(IPv4Interface(f"{ip}/{m['prefixlen']}"),
                           flags if flags is not None else m["flags"], m["scope"]))
    return out


def addresses(name: str) -> List[IPv4Interface]:
    return [a.iface for a in address_entries(name)]


def address_add(name: str, ip: AddrLike, prefixlen: int = 32) -> None:
    idx = _require_index(name, "add address to")
    _call(f"add address {ip}/{prefixlen} to {name}",
          lambda i: i.addr("add", index=idx, address=str(ip), prefixlen=int(prefixlen)))


def address_delete(name: str, ip: AddrLike, prefixlen: int) -> bool:
    idx = _require_index(name, "delete address from")
    return _ignore((_errno.EADDRNOTAVAIL, _errno.ENOENT), f"delete address {ip}/{prefixlen} from {name}",
                   lambda i: i.addr("del", index=idx, address=str(ip), prefixlen=int(prefixlen)))


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
    want = IPv4Address(str(ip))
    msgs = _call(f"find the interface of {ip}", lambda i: i.addr("dump", family=AF_INET))
    for m in msgs:
        if m["family"] == AF_INET and IPv4Address(m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")) == want:
            return link_name(m["index"])
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


def _route_from(msg, names: Dict[int, str]) -> Route:
    dst = msg.get_attr("RTA_DST") or "0.0.0.0"
    gw = msg.get_attr("RTA_GATEWAY")
    oif = msg.get_attr("RTA_OIF")
    if oif is None:                                        # multipath: first hop
        mp = msg.get_attr("RTA_MULTIPATH")
        if mp:
            oif = mp[0].get("oif")
            gw = gw or mp[0].get_attr("RTA_GATEWAY")
    src = msg.get_attr("RTA_PREFSRC")
    return Route(dst=IPv4Network(f"{dst}/{msg['dst_len']}"), gateway=IPv4Address(gw) if gw else None,
                 oif=oif, dev=names.get(oif) if oif else None, onlink=bool(msg["flags"] & RTNH_F_ONLINK),
                 type=msg["type"], proto=msg["proto"], scope=msg["scope"],
                 prefsrc=IPv4Address(src) if src else None, priority=msg.get_attr("RTA_PRIORITY"))


def route_list(dev: Optional[str] = None) -> List[Route]:
    """IPv4 routes of the main table, optionally only those leaving through `dev`."""
    idx = _require_index(dev, "list routes of") if dev else None

    def dump(i):
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in i.link("dump")}
        return names, i.route("dump", family=AF_INET)

    names, msgs = _call(f"list routes{' of ' + dev if dev else ''}", dump)
    out = []
    for m in msgs:
        table = m.get_attr("RTA_TABLE") or m["table"]
        if m["family"] != AF_INET or table != RT_TABLE_MAIN:
            continue
        r = _route_from(m, names)
        if idx is None or r.oif == idx:
            out.append(r)
    return out


def _route_spec(dst: IPv4Network, gateway, dev, onlink: bool, blackhole: bool,
                delete: bool = False) -> Dict[str, Any]:
    dst = IPv4Network(str(dst))
    spec: Dict[str, Any] = dict(dst=str(dst), family=AF_INET, table=RT_TABLE_MAIN)
    if not delete:
        spec["proto"] = RTPROT_BOOT        # pyroute2 would say "static"; flannel's routes are "boot"
    if blackhole:
        spec["type"] = "blackhole"
    if gateway is not None:
        spec["gateway"] = str(gateway)
    if dev is not None:
        spec["oif"] = dev if isinstance(dev, int) else _require_index(dev, f"route {dst} via")
    if onlink:
        spec["flags"] = RTNH_F_ONLINK
    return spec


def route_replace(dst: IPv4Network, gateway: Optional[AddrLike] = None, dev: Union[str, int, None] = None,
                  onlink: bool = False, blackhole: bool = False) -> None:
    """`ip route replace DST [via GW] [dev DEV] [onlink]` (or `blackhole DST`), main table."""
    spec = _route_spec(dst, gateway, dev, onlink, blackhole)
    desc = f"replace route {dst}" + (f" via {gateway}" if gateway else "") + (f" dev {dev}" if dev else "")
    _call(desc, lambda i: i.route("replace", **spec))


def route_delete(dst: IPv4Network, gateway: Optional[AddrLike] = None,
                 dev: Union[str, int, None] = None, blackhole: bool = False) -> bool:
    """Delete the matching route; False when there was none (or `dev` is gone)."""
    if isinstance(dev, str) and link_index(dev) is None:
        return False
    spec = _route_spec(dst, gateway, dev, False, blackhole, delete=True)
    desc = f"delete route {dst}" + (f" via {gateway}" if gateway else "") + (f" dev {dev}" if dev else "")
    return _ignore((_errno.ESRCH, _errno.ENOENT), desc, lambda i: i.route("del", **spec))


def route_get(dst_ip: AddrLike) -> Tuple[Optional[int], Optional[IPv4Address], Optional[IPv4Address]]:
    """`ip route get DST`: (oif index, gateway or None when on-link, preferred source)."""
    msgs = _call(f"route get {dst_ip}", lambda i: i.route("get", dst=str(dst_ip)))
    if not msgs:
        raise NetlinkError(f"route get {dst_ip}: no route", _errno.ENETUNREACH)
    r = _route_from(msgs[0], {})
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
    _call(f"replace neighbour {ip} lladdr {mac} dev {dev}",
          lambda i: i.neigh("replace", family=AF_INET, dst=str(ip), lladdr=mac, ifindex=idx,
                            state=NUD_PERMANENT))


def neigh_delete(ip: AddrLike, dev: str) -> bool:
    idx = link_index(dev)
    if idx is None:
        return False
    return _ignore((_errno.ENOENT, _errno.ESRCH), f"delete neighbour {ip} dev {dev}",
                   lambda i: i.neigh("del", family=AF_INET, dst=str(ip), ifindex=idx))


def neigh_list(dev: str) -> List[Neighbour]:
    idx = _require_index(dev, "list neighbours of")
    msgs = _call(f"list neighbours of {dev}", lambda i: i.neigh("dump", family=AF_INET, ifindex=idx))
    out = []
    for m in msgs:
        if m["family"] == AF_INET and m["ifindex"] == idx and m.get_attr("NDA_DST"):
            mac = m.get_attr("NDA_LLADDR")
            out.append(Neighbour(IPv4Address(m.get_attr("NDA_DST")), mac.lower() if mac else None, m["state"]))
    return out


def fdb_replace(mac: str, dev: str, dst_ip: AddrLike) -> None:
    """`bridge fdb replace MAC dev DEV dst IP self permanent` (AF_BRIDGE, NTF_SELF)."""
    idx = _require_index(dev, "replace FDB entry on")
    _call(f"replace FDB entry {mac} dst {dst_ip} dev {dev}",
          lambda i: i.fdb("replace", lladdr=mac, ifindex=idx, dst=str(dst_ip),
                          state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF))


def fdb_delete(mac: str, dev: str, dst_ip: Optional[AddrLike] = None) -> bool:
    """Delete the FDB entry for MAC (only the remote `dst_ip` when given); False if absent."""
    idx = link_index(dev)
    if idx is None:
        return False
    kw: Dict[str, Any] = dict(lladdr=mac, ifindex=idx, state=NUD_NOARP | NUD_PERMANENT, flags=NTF_SELF)
    if dst_ip is not None:
        kw["dst"] = str(dst_ip)
    return _ignore((_errno.ENOENT, _errno.ESRCH), f"delete FDB entry {mac} dev {dev}",
                   lambda i: i.fdb("del", **kw))


def fdb_list(dev: str) -> List[FdbEntry]:
    idx = _require_index(dev, "list FDB of")
    msgs = _call(f"list FDB of {dev}", lambda i: i.fdb("dump", ifindex=idx))
    out = []
    for m in msgs:
        if m["family"] != AF_BRIDGE or m["ifindex"] != idx or not m.get_attr("NDA_LLADDR"):
            continue
        dst = m.get_attr("NDA_DST")
        out.append(FdbEntry(m.get_attr("NDA_LLADDR").lower(), IPv4Address(dst) if dst else None,
                            m["state"], m["flags"]))
    return out


# -- many per-peer objects at once (agent/rtnl.py) -----------------------------------------------
# The per-peer hot path of the kernel backends: requests packed by rtnl's builders
# (rtnl.route_replace, rtnl.neigh_replace, rtnl.fdb_replace, ... by ifindex) and sent many per
# sendmsg, and dumps the kernel filters to one device. docs/architecture.md §"Scale".
_raw: Optional[Any] = None          # rtnl.Requests of this process and namespace
_raw_pid = 0


def _requests():
    global _raw, _raw_pid
    from . import rtnl
    if _raw is None or _raw_pid != os.getpid():       # set_netns() closes it
        try:
            _raw, _raw_pid = rtnl.Requests(_netns), os.getpid()
        except OSError as e:
            raise NetlinkError(f"open rtnetlink socket: {e.strerror or e}", e.errno) from None
    return _raw


def send_batch(msgs: List[bytes]) -> List[Tuple[int, int]]:
    """Send rtnl-built requests in as few sendmsg calls as fit; return (index, errno) of each one
    the kernel refused (the others were applied, in order)."""
    if not msgs:
        return []
    with _lock:
        try:
            return _requests().send(msgs)
        except OSError as e:
            close_raw()
            raise NetlinkError(f"send {len(msgs)} rtnetlink requests: {e.strerror or e}", e.errno) from None


def dump_routes(oif: int = 0):
    """Main-table IPv4 routes (rtnl.RouteMsg), filtered by the kernel to output device `oif`."""
    from . import rtnl
    with _lock:
        try:
            return rtnl.dump_routes(_requests(), oif=oif)
        except OSError as e:
            close_raw()
            raise NetlinkError(f"dump routes of #{oif}: {e.strerror or e}", e.errno) from None


def dump_neighbours(ifindex: int, fdb: bool = False):
    """Neighbours (AF_INET) or FDB entries (AF_BRIDGE) of one device as rtnl.NeighMsg."""
    from . import rtnl
    family = rtnl.AF_BRIDGE if fdb else rtnl.AF_INET
    with _lock:
        try:
            return rtnl.dump_neighbours(_requests(), family, ifindex)
        except OSError as e:
            close_raw()
            raise NetlinkError(f"dump {'FDB' if fdb else 'neighbours'} of #{ifindex}: {e.strerror or e}",
                               e.errno) from None


def close_raw() -> None:
    global _raw
    with _lock:
        if _raw is not None and _raw_pid == os.getpid():
            _raw.close()
        _raw = None


def kernel_watch(on_changes: Optional[Callable[[Any], None]] = None):
    """A kernelwatch.KernelWatch in this module's namespace (see set_netns): read with poll(), or
    start() its thread when `on_changes` is given."""
    from .kernelwatch import KernelWatch
    try:
        w = KernelWatch(on_changes or (lambda _c: None), netns=_netns)
        return w.start() if on_changes else w
    except OSError as e:
        raise NetlinkError(f"subscribe to rtnetlink notifications: {e.strerror or e}", e.errno) from None
