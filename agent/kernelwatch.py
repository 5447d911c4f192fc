"""Kernel notifications of deleted routes, neighbours and FDB entries: repair without polling.

A backend that keeps thousands of kernel objects cannot dump and compare all of them every 10 s
(docs/architecture.md §"Scale"). Instead one netlink socket joins the multicast groups that
report deletions — RTNLGRP_IPV4_ROUTE (RTM_DELROUTE), RTNLGRP_NEIGH (RTM_DELNEIGH for neighbours,
and with AF_BRIDGE for the VXLAN FDB), RTNLGRP_LINK and RTNLGRP_IPV4_IFADDR (a device or address
gone takes routes with it without a notification per route) — and a thread hands each batch of
them to the backend, which re-adds what it still wants.

* Our own additions would echo back as RTM_NEWROUTE/RTM_NEWNEIGH, tens of thousands at start-up.
  A classic BPF filter on the socket keeps only deletions and link/address changes, so echoes
  never reach the receive buffer. Our own deletions do arrive; the backend ignores what it no
  longer wants.
* Overflow: if notifications come faster than we read (someone flushed 10,000 routes), the
  kernel drops them and the next recv fails with ENOBUFS. Nothing tells which ones were lost, so
  the callback is told to resync everything once (`overflow=True`).
* The receive buffer is sized for a burst of deletions (RCVBUF_BYTES); past it, the overflow path.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from . import rtnl

log = logging.getLogger("fastflannel.kernelwatch")

RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
GROUPS = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
# About 1 KiB of buffer per queued notification (skb truesize): room for ~4,000 deletions between
# two reads; a larger burst goes down the overflow path (one full resync).
RCVBUF_BYTES = 4 << 20
WANTED_TYPES = (rtnl.RTM_DELROUTE, rtnl.RTM_DELNEIGH, rtnl.RTM_DELLINK, rtnl.RTM_NEWLINK, rtnl.RTM_DELADDR)
POLL_S = 0.5                     # how soon the thread notices stop()
# The thread waits this long after the first notification before it reads and repairs: a flush of
# many objects then arrives as one batch (one repair pass), and repair still lands well within the
# 10 s that flannel's route check allows.
REPAIR_DELAY_S = 2.0
SO_ATTACH_FILTER = 26


@dataclass
class Changes:
    """One batch of notifications, as the backend's repair callback gets it."""
    routes: list[rtnl.RouteMsg] = field(default_factory=list)       # deleted routes
    neighbours: list[rtnl.NeighMsg] = field(default_factory=list)   # deleted neighbours / FDB entries
    links: list[rtnl.LinkMsg] = field(default_factory=list)         # link changes, deleted links/addresses
    overflow: bool = False       # notifications were lost: resync everything

    def __bool__(self) -> bool:
        return bool(self.routes or self.neighbours or self.links or self.overflow)


def _type_filter(types: tuple[int, ...]) -> bytes:
    """cBPF: accept a netlink message whose nlmsg_type is one of `types`, drop the others.

    BPF loads are big-endian, nlmsg_type is host order: compare with the byte-swapped value."""
    ld_h_abs, jeq_k, ret_k = 0x28, 0x15, 0x06
    insns = [(ld_h_abs, 0, 0, 4)]
    n = len(types)
    for i, t in enumerate(types):
        swapped = struct.unpack(">H", struct.pack("=H", t))[0]
        insns.append((jeq_k, n - i, 0, swapped))      # jt: to the accept instruction
    insns += [(ret_k, 0, 0, 0), (ret_k, 0, 0, 0xFFFFFFFF)]
    return b"".join(struct.pack("=HBBI", *i) for i in insns)


def attach_filter(sock: socket.socket, types: tuple[int, ...]) -> None:
    prog = _type_filter(types)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("@HP", len(prog) // 8, ctypes.addressof(buf))   # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _read(sock: socket.socket, out: Changes) -> None:
    """Drain what is queued now into `out` (never blocks)."""
    while True:
        try:
            buf = sock.recv(rtnl.RECV_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            out.overflow = True
            continue
        for off, kind, _seq, end in rtnl.messages(buf):
            m = rtnl.parse(buf, off, kind, end)
            if isinstance(m, rtnl.RouteMsg):
                out.routes.append(m)
            elif isinstance(m, rtnl.NeighMsg):
                out.neighbours.append(m)
            elif isinstance(m, rtnl.LinkMsg):
                out.links.append(m)


class KernelWatch:
    """Deletions the kernel reported, read with poll() or, once start()ed, handed to
    `on_changes(Changes)` from its own thread REPAIR_DELAY_S after the first one of a batch.

    Open it *before* the state it guards is programmed: what is deleted in between is then
    reported, not missed. Both ways may be used at once (each report goes to one of them). The
    callback runs on the watch thread; after an exception in it the next batch is delivered as an
    overflow (the backend resyncs everything)."""

    def __init__(self, on_changes: Callable[[Changes], None], netns: str | None = None,
                 rcvbuf: int = RCVBUF_BYTES, delay_s: float = REPAIR_DELAY_S):
        self.on_changes = on_changes
        self.delay_s = delay_s
        self._read_lock = threading.Lock()
        self.sock = rtnl.open_socket(GROUPS, netns, rcvbuf)
        try:
            attach_filter(self.sock, WANTED_TYPES)
        except OSError:
            self.sock.close()
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0             # delivered batches (for tests and /stats)
        self.overflows = 0

    def start(self) -> KernelWatch:
        self._thread = threading.Thread(target=self._run, name="kernel-watch", daemon=True)
        self._thread.start()
        return self

    def poll(self, timeout: float = 0.0) -> Changes:
        """Wait up to `timeout` for notifications; return what is queued (the thread's step)."""
        out = Changes()
        if select.select([self.sock], [], [], timeout)[0]:
            with self._read_lock:
                _read(self.sock, out)
        return out

    def _run(self) -> None:
        failed = False
        while not self._stop.is_set():
            try:
                if not select.select([self.sock], [], [], POLL_S)[0] or self._stop.wait(self.delay_s):
                    continue
                changes = self.poll(0)
            except OSError as e:
                if self._stop.is_set():
                    return
                log.error("kernel notifications: %s; resyncing", e)
                changes = Changes(overflow=True)
            if failed:
                changes.overflow, failed = True, False
            if not changes:
                continue
            self.batches += 1
            if changes.overflow:
                self.overflows += 1
                log.warning("kernel notifications overflowed the receive buffer; resyncing every peer")
            try:
                self.on_changes(changes)
            except Exception as e:  # the backend's own errors are logged; keep watching
                log.error("repair after kernel notifications failed: %s", e)
                failed = True

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=2 * POLL_S + 1)
        self.sock.close()
