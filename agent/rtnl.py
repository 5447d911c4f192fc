"""Raw rtnetlink for the per-peer hot path: batched requests, kernel-filtered dumps, notifications.

pyroute2, which agent/netlink.py used before, built a Python object tree for every request and
reply (about a millisecond per route at 10,000 peers) and cost ~20 MiB to import. The per-peer
objects of the kernel backends are three fixed shapes (a route, a neighbour, an FDB entry), so
this module packs them with `struct` and sends many in one `sendmsg`. rtnetlink handles every
message of a send synchronously and in order, inside the `sendmsg` call, so a batch needs no
acknowledgement per message: only failures come back (NLMSG_ERROR with the request's sequence
number), and they are read once the send returns. Dumps use strict checking
(NETLINK_GET_STRICT_CHK, Linux 4.20+), so the kernel filters by table, device and protocol and
only our objects cross into Python.

The objects and their kernel shapes are docs/flannel-compat.md §"vxlan per-peer state" and
§"host-gw"; why this layer exists and what it costs is docs/architecture.md §"Scale".
No pyroute2 here; the namespace switch for tests (`open_socket(netns=...)`) uses setns(2).
"""
from __future__ import annotations

import ctypes
import errno as _errno
import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10             # errors carry only the request's header, not the whole request
NETLINK_GET_STRICT_CHK = 12      # dumps filtered by the kernel (table, oif, protocol, ifindex)

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP, NLM_F_REPLACE, NLM_F_CREATE = 0x300, 0x100, 0x400

RTM_NEWLINK, RTM_DELLINK, RTM_DELADDR = 16, 17, 21
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

AF_INET, AF_BRIDGE = 2, 7
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02

_HDR = struct.Struct("=IHHII")           # nlmsghdr: len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")     # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")      # family, ifindex, state, flags, type
_ATTR = struct.Struct("=HH")
U32_ATTR = struct.Struct("=HHI")
_ERR = struct.Struct("=i")

SEND_CHUNK_BYTES = 32 * 1024     # one sendmsg; failures of a chunk (≤ ~400 messages) fit the rcvbuf
REQUEST_RCVBUF_BYTES = 1 << 20   # room for one chunk's worth of error replies
RECV_BYTES = 1 << 16


def ip4(addr: object) -> bytes:
    """4 bytes of an IPv4 address given as IPv4Address, str or int."""
    if isinstance(addr, int):
        return addr.to_bytes(4, "big")
    packed = getattr(addr, "packed", None)
    return packed if packed is not None else socket.inet_aton(str(addr))


def mac_bytes(mac: str) -> bytes:
    """6 bytes of `aa:bb:cc:dd:ee:ff`; ValueError for anything else."""
    parts = str(mac).split(":")
    try:
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise ValueError
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"bad MAC {mac!r}") from None


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _ATTR.pack(n, kind) + payload + b"\0" * (-n & 3)


def msg(kind: int, flags: int, body: bytes) -> bytes:
    """A request: nlmsghdr (NLM_F_REQUEST | flags; seq and pid filled in when sent) + body."""
    return _HDR.pack(16 + len(body), kind, flags | NLM_F_REQUEST, 0, 0) + body


_REPLACE = NLM_F_CREATE | NLM_F_REPLACE


# -- the three per-peer objects ----------------------------------------------------------------
def route_replace(dst: object, plen: int, gateway: object, oif: int, onlink: bool = False) -> bytes:
    """`ip route replace DST/PLEN via GW dev OIF [onlink] proto boot` in the main table."""
    body = (RTMSG.pack(AF_INET, plen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST,
                        RTNH_F_ONLINK if onlink else 0)
            + attr(RTA_DST, ip4(dst)) + attr(RTA_GATEWAY, ip4(gateway)) + U32_ATTR.pack(8, RTA_OIF, oif))
    return msg(RTM_NEWROUTE, _REPLACE, body)


def route_delete(dst: object, plen: int, gateway: object | None = None, oif: int = 0) -> bytes:
    """`ip route del DST/PLEN [via GW] [dev OIF]` in the main table (any scope, type, protocol)."""
    body = RTMSG.pack(AF_INET, plen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0) + attr(RTA_DST, ip4(dst))
    if gateway is not None:
        body += attr(RTA_GATEWAY, ip4(gateway))
    if oif:
        body += U32_ATTR.pack(8, RTA_OIF, oif)
    return msg(RTM_DELROUTE, 0, body)


def neigh_replace(ip: object, mac: str, ifindex: int) -> bytes:
    """`ip neigh replace IP lladdr MAC dev IFINDEX nud permanent`."""
    body = (NDMSG.pack(AF_INET, ifindex, NUD_PERMANENT, 0, 0)
            + attr(NDA_DST, ip4(ip)) + attr(NDA_LLADDR, mac_bytes(mac)))
    return msg(RTM_NEWNEIGH, _REPLACE, body)


def neigh_delete(ip: object, ifindex: int) -> bytes:
    return msg(RTM_DELNEIGH, 0, NDMSG.pack(AF_INET, ifindex, 0, 0, 0) + attr(NDA_DST, ip4(ip)))


def fdb_replace(mac: str, ifindex: int, dst: object) -> bytes:
    """`bridge fdb replace MAC dev IFINDEX dst DST self permanent`."""
    body = (NDMSG.pack(AF_BRIDGE, ifindex, NUD_NOARP | NUD_PERMANENT, NTF_SELF, 0)
            + attr(NDA_LLADDR, mac_bytes(mac)) + attr(NDA_DST, ip4(dst)))
    return msg(RTM_NEWNEIGH, _REPLACE, body)


def fdb_delete(mac: str, ifindex: int, dst: object | None = None) -> bytes:
    body = NDMSG.pack(AF_BRIDGE, ifindex, NUD_NOARP | NUD_PERMANENT, NTF_SELF, 0) + attr(NDA_LLADDR, mac_bytes(mac))
    if dst is not None:
        body += attr(NDA_DST, ip4(dst))
    return msg(RTM_DELNEIGH, 0, body)


# -- what the kernel reports -------------------------------------------------------------------
@dataclass(frozen=True)
class RouteMsg:
    kind: int                   # RTM_NEWROUTE / RTM_DELROUTE
    dst: int                    # host-order IPv4
    plen: int
    table: int
    oif: int
    gateway: int | None
    proto: int
    type: int


@dataclass(frozen=True)
class NeighMsg:
    kind: int                   # RTM_NEWNEIGH / RTM_DELNEIGH
    family: int                 # AF_INET: a neighbour; AF_BRIDGE: an FDB entry
    ifindex: int
    dst: int | None             # host-order IPv4 (the neighbour's IP, or the FDB entry's remote)
    mac: str | None
    state: int
    flags: int = 0              # NTF_*: NTF_SELF for a device's own FDB entries


@dataclass(frozen=True)
class LinkMsg:
    kind: int                   # RTM_NEWLINK / RTM_DELLINK / RTM_DELADDR
    ifindex: int


def attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    """The attributes (type without the NESTED/BYTEORDER bits -> payload) between off and end."""
    out = {}
    while off + 4 <= end:
        n, kind = _ATTR.unpack_from(buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4:off + n]
        off += (n + 3) & ~3
    return out


def u32(raw: bytes | None) -> int:
    return struct.unpack("=I", raw)[0] if raw is not None and len(raw) == 4 else 0


def be32(raw: bytes | None) -> int | None:
    return int.from_bytes(raw, "big") if raw is not None and len(raw) == 4 else None


def parse(buf: bytes, off: int, kind: int, end: int) -> RouteMsg | NeighMsg | LinkMsg | None:
    """One rtnetlink message body (after its nlmsghdr) as a RouteMsg/NeighMsg/LinkMsg; None for
    other kinds, other families and truncated messages."""
    body = off + 16
    if kind in (RTM_NEWROUTE, RTM_DELROUTE) and end - body >= RTMSG.size:
        fam, plen, _s, _t, table, proto, _sc, rtype, _f = RTMSG.unpack_from(buf, body)
        if fam != AF_INET:
            return None
        a = attrs(buf, body + RTMSG.size, end)
        return RouteMsg(kind, be32(a.get(RTA_DST)) or 0, plen, u32(a.get(RTA_TABLE)) or table,
                        u32(a.get(RTA_OIF)), be32(a.get(RTA_GATEWAY)), proto, rtype)
    if kind in (RTM_NEWNEIGH, RTM_DELNEIGH) and end - body >= NDMSG.size:
        fam, ifindex, state, nflags, _t = NDMSG.unpack_from(buf, body)
        if fam not in (AF_INET, AF_BRIDGE):
            return None
        a = attrs(buf, body + NDMSG.size, end)
        ll = a.get(NDA_LLADDR)
        mac = ":".join(f"{x:02x}" for x in ll) if ll is not None and len(ll) == 6 else None
        return NeighMsg(kind, fam, ifindex, be32(a.get(NDA_DST)), mac, state, nflags)
    if kind in (RTM_NEWLINK, RTM_DELLINK, RTM_DELADDR) and end - body >= 8:
        idx = struct.unpack_from("=i", buf, body + 4)[0]     # ifinfomsg.ifi_index / ifaddrmsg.ifa_index
        if kind == RTM_DELADDR:
            idx = struct.unpack_from("=I", buf, body + 4)[0]
        return LinkMsg(kind, idx)
    return None


def messages(buf: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(offset, type, seq, end) of each nlmsghdr in one datagram."""
    off, n = 0, len(buf)
    while off + 16 <= n:
        length, kind, _flags, seq, _pid = _HDR.unpack_from(buf, off)
        if length < 16 or off + length > n:
            return
        yield off, kind, seq, off + length
        off += (length + 3) & ~3


# -- sockets -----------------------------------------------------------------------------------
_libc = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, 0x40000000) != 0:          # CLONE_NEWNET
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def open_socket(groups: int = 0, netns: str | None = None, rcvbuf: int = REQUEST_RCVBUF_BYTES) -> socket.socket:
    """An NETLINK_ROUTE socket (in namespace `netns`, a name under /run/netns, when given)."""
    if netns is None:
        return _new_socket(groups, rcvbuf)
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return _new_socket(groups, rcvbuf)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


def _new_socket(groups: int, rcvbuf: int) -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        try:   # past net.core.rmem_max when we may (CAP_NET_ADMIN), else up to it
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)            # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        s.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        s.bind((0, groups))
    except OSError:
        s.close()
        raise
    return s


class Requests:
    """One request socket: batches of messages, and filtered dumps. Not thread-safe (netlink.py
    holds its lock around it)."""

    def __init__(self, netns: str | None = None):
        self.sock = open_socket(0, netns)
        self.pid = os.getpid()
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _stamp(self, msg: bytes, flags: int = 0) -> tuple[bytes, int]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        length, kind, f, _seq, pid = _HDR.unpack_from(msg, 0)
        return _HDR.pack(length, kind, f | flags, self._seq, pid) + msg[16:], self._seq

    def send(self, msgs: Sequence[bytes]) -> list[tuple[int, int]]:
        """Send every message; return (index in `msgs`, errno) of each one the kernel refused."""
        failed: list[tuple[int, int]] = []
        chunk: list[bytes] = []
        first: dict[int, int] = {}           # seq -> index
        size = 0
        for i, raw in enumerate(msgs):
            stamped, seq = self._stamp(raw)
            first[seq] = i
            chunk.append(stamped)
            size += len(stamped)
            if size >= SEND_CHUNK_BYTES:
                self._flush(chunk, first, failed)
                chunk, first, size = [], {}, 0
        if chunk:
            self._flush(chunk, first, failed)
        return failed

    def _flush(self, chunk: list[bytes], index: dict[int, int], failed: list[tuple[int, int]]) -> None:
        # rtnetlink has processed the whole chunk when sendmsg returns: only errors are queued.
        self.sock.sendall(b"".join(chunk))
        while True:
            try:
                buf = self.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            for off, kind, seq, _end in messages(buf):
                if kind == NLMSG_ERROR and seq in index:
                    code = -_ERR.unpack_from(buf, off + 16)[0]
                    if code:
                        failed.append((index[seq], code))

    def ack(self, msg: bytes) -> None:
        """Send one request and wait for the kernel's answer; OSError(errno) if it refused."""
        for _ in self._exchange(msg, NLM_F_ACK):
            pass

    def get(self, msg: bytes) -> tuple[bytes, int, int, int] | None:
        """One request that the kernel answers with one message (a get): (datagram, offset, type,
        end); OSError(errno) if it refused."""
        for reply in self._exchange(msg, 0):
            return reply
        return None

    def _exchange(self, msg: bytes, flags: int) -> Iterator[tuple[bytes, int, int, int]]:
        """Send `msg` with `flags`; yield its replies, (datagram, offset, type, end) each, up to
        what ends the exchange: NLMSG_DONE (a dump), the kernel's ack (NLM_F_ACK) or the first
        reply (a get). An error answer raises OSError(errno)."""
        stamped, seq = self._stamp(msg, flags)
        self.sock.sendall(stamped)
        is_dump = flags & NLM_F_DUMP == NLM_F_DUMP
        while True:
            buf = self.sock.recv(RECV_BYTES)
            for off, kind, mseq, end in messages(buf):
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE and is_dump:
                    return
                if kind == NLMSG_ERROR:
                    code = -_ERR.unpack_from(buf, off + 16)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return
                yield buf, off, kind, end
                if not is_dump and not flags & NLM_F_ACK:
                    return

    def dump(self, msg: bytes) -> Iterator[tuple[bytes, int, int, int]]:
        """The replies of one dump request: (datagram, offset, type, end) per message."""
        return self._exchange(msg, NLM_F_DUMP)


def route_dump_request(oif: int = 0, table: int = RT_TABLE_MAIN, proto: int = 0) -> bytes:
    """RTM_GETROUTE dump filtered by the kernel: table, protocol (0 = any), output device (0 = any)."""
    body = RTMSG.pack(AF_INET, 0, 0, 0, table if table < 256 else 0, proto, 0, 0, 0)
    body += U32_ATTR.pack(8, RTA_TABLE, table)
    if oif:
        body += U32_ATTR.pack(8, RTA_OIF, oif)
    return msg(RTM_GETROUTE, 0, body)


def neigh_dump_request(family: int, ifindex: int) -> bytes:
    """RTM_GETNEIGH dump of one device: neighbours (AF_INET) or FDB entries (AF_BRIDGE)."""
    return msg(RTM_GETNEIGH, 0, NDMSG.pack(family, 0, 0, 0, 0) + U32_ATTR.pack(8, NDA_IFINDEX, ifindex))


def dump_routes(req: Requests, oif: int = 0, proto: int = 0) -> list[RouteMsg]:
    out = []
    for buf, off, kind, end in req.dump(route_dump_request(oif, RT_TABLE_MAIN, proto)):
        m = parse(buf, off, kind, end)
        if isinstance(m, RouteMsg):
            out.append(m)
    return out


def dump_neighbours(req: Requests, family: int, ifindex: int) -> list[NeighMsg]:
    out = []
    for buf, off, kind, end in req.dump(neigh_dump_request(family, ifindex)):
        m = parse(buf, off, kind, end)
        if isinstance(m, NeighMsg) and m.family == family and m.ifindex == ifindex:
            out.append(m)
    return out


def errno_name(code: int) -> str:
    return _errno.errorcode.get(code, str(code))

