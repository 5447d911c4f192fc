"""host-gw backend: one plain route per peer, `<peer subnet> via <peer PublicIP> dev <ext iface>`
(docs/flannel-compat.md §"host-gw"; flannel's backend/hostgw and route_network.go). Hosts must
share a link.

A route with the same destination but another gateway or device is replaced, an identical one is
left alone; sync_peers() also removes routes inside Network through the external interface that
belong to no live lease (flannel leaves those behind after a restart). At scale
(docs/architecture.md §"Scale"): an event costs one netlink request, never a table dump; sync_peers()
is one filtered dump and one batch; a route someone deletes is re-added as soon as the kernel
reported the deletion (agent/kernelwatch.py: its thread repairs ~2 s after a report, check() reads
pending reports too), and a lost notification or a link change costs one full resync. Without a
notification socket, check() (every 10 s) does that full pass every time.

Nothing is shared between peers: two leases with the same PublicIP (a copied lease) have one
route each, to their own subnet, so removing one never touches the other's. A lease outside
Network is never routed (docs/architecture.md §"Lease admission"), and an error in one peer's
route (the kernel's refusal, or an unexpected exception building its request) never stops the
others': each request of a batch is built on its own, and the kernel answers each one apart.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import threading
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Tuple

from .. import metrics, netlink, rtnl
from ..config import NetworkConfig
from ..errors import BackendError
from ..iface import ExternalInterface
from ..lease import Lease, LeaseAttrs
from ..peers import network_problem
from .base import BackendOptions, PeerCalls

if TYPE_CHECKING:
    from ..kernelwatch import Changes, KernelWatch

log = logging.getLogger("fastflannel.hostgw")

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
Step = Tuple[str, Callable[[], bytes]]      # what (for the log), how to build its request


class HostGwBackend(PeerCalls):
    name = "host-gw"

    def __init__(self, ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions):
        if ipaddress.IPv4Address(str(ext.ext_addr)) != ipaddress.IPv4Address(str(ext.iface_addr)):
            raise BackendError(f"host-gw requires the public IP to be the interface's address (NAT?): "
                               f"public IP {ext.ext_addr} is not {ext.name}'s address {ext.iface_addr}")
        self.ext = ext
        self.lease: Optional[Lease] = None
        self.network: Optional[IPv4Network] = None
        self.routes: Dict[IPv4Network, ipaddress.IPv4Address] = {}    # peer subnet -> gateway
        self._lock = threading.RLock()
        self._watch: Optional[KernelWatch] = None

    def mtu(self) -> int:
        return self.ext.mtu

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.ext_addr, "host-gw", None)

    def setup(self, lease: Lease, cfg: NetworkConfig) -> None:
        with self._lock:
            self.lease, self.network = lease, cfg.network

    def add_peer(self, lease: Lease) -> None:
        with self._lock:
            gw = self._gateway(lease)
            if gw is not None:
                # O(1): one `route replace` (it also replaces a route to sn via another gateway);
                # a conflicting route with another metric is left to the next full resync.
                self.routes[lease.subnet] = gw
                msgs = self._build([self._replace(lease.subnet, gw)])
                if msgs and self._send_logged(msgs, "add") == 0:
                    log.info("host-gw route %s via %s dev %s", lease.subnet, gw, self.ext.name)
            elif lease.subnet in self.routes and lease.attrs is not None:
                self.remove_peer(Lease(lease.subnet, None))         # the peer switched backends

    def remove_peer(self, lease: Lease) -> None:
        with self._lock:
            gw = self.routes.pop(lease.subnet, None)
            if gw is None and lease.attrs is not None and self._gateway(lease) is not None:
                gw = lease.attrs.public_ip          # never seen (removed before we started)
            if gw is None:
                return
            log.info("removing host-gw route %s via %s", lease.subnet, gw)
            sn = lease.subnet
            for code in self._send(self._build([self._delete(sn, int(gw), self.ext.index)]), "remove"):
                if code not in (errno.ESRCH, errno.ENOENT):
                    log.error("host-gw: removing the route %s via %s failed: %s", sn, gw, os.strerror(code))

    def sync_peers(self, leases: Iterable[Lease]) -> None:
        with self._lock:
            wanted = {lease.subnet: gw for lease in leases if (gw := self._gateway(lease)) is not None}
            for sn in [s for s in self.routes if s not in wanted]:
                self.remove_peer(Lease(sn, None))
            self.routes.update(wanted)
            self._start_watch()          # before programming: a deletion in between is reported
            self._resync(prune=True)
            log.info("host-gw: %d peer routes", len(self.routes))

    def check(self) -> None:
        """The 10 s tick: re-add the routes the kernel reported deleted since the last tick (a
        full resync after lost notifications); without a notification socket, a full pass."""
        with self._lock:
            if self._watch is None:
                self._start_watch()
                self._resync(prune=False)
                return
            try:
                changes = self._watch.poll(0)
            except OSError as e:
                log.warning("host-gw: kernel notifications failed (%s); resyncing", e)
                self._watch.close()
                self._watch = None
                return self.check()
            if changes:
                self._repair(changes)

    def stats(self) -> dict:
        return {}     # the kernel forwards; it keeps no counters of ours

    def describe(self) -> dict:
        """The options `fastflannel status` shows."""
        return {"device": self.ext.name}

    def observe(self) -> metrics.DataPlane:
        """Nothing: host-gw has no device of its own, its routes go through the external
        interface, whose counters mix in all of the host's traffic (node_exporter has them)."""
        return metrics.DataPlane()

    def close(self) -> None:
        # flannel leaves its routes in place
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    # -- helpers ---------------------------------------------------------------------------------
    def _gateway(self, lease: Lease) -> Optional[ipaddress.IPv4Address]:
        """The PublicIP of a host-gw peer we route to; None for our own lease and other backends."""
        if lease.attrs is None:
            return None
        if self.lease is not None and lease.subnet == self.lease.subnet:
            return None
        if lease.attrs.backend_type != "host-gw":
            log.info("ignoring non-host-gw v4 subnet(%s): type=%s", lease.subnet, lease.attrs.backend_type)
            return None
        why = network_problem(lease.subnet, self.network) if self.network is not None else None
        if why is not None:
            log.warning("host-gw: refusing lease %s: it %s", lease.subnet, why)
            return None
        return lease.attrs.public_ip

    def _replace(self, sn: IPv4Network, gw) -> Step:
        return (f"route {sn} via {gw}",
                lambda: rtnl.route_replace(sn.network_address, sn.prefixlen, gw, self.ext.index))

    def _delete(self, sn: IPv4Network, gw: Optional[int], oif: int) -> Step:
        return (f"delete route {sn}", lambda: rtnl.route_delete(sn.network_address, sn.prefixlen, gw, oif))

    @staticmethod
    def _build(steps: Iterable[Step]) -> List[bytes]:
        """Each step's request, built on its own: one that raises (a bug, bad data) is logged
        and left out, and the other peers' requests still go (docs/architecture.md §"Lease
        admission")."""
        out = []
        for what, build in steps:
            try:
                out.append(build())
            except Exception as e:
                log.error("host-gw: %s failed: %s: %s", what, type(e).__name__, e)
        return out

    def _send(self, msgs: List[bytes], what: str) -> List[int]:
        """Send a batch; the errno of each request the kernel refused (all of them when the
        batch could not be sent)."""
        try:
            return [code for _i, code in netlink.send_batch(msgs)]
        except Exception as e:  # NetlinkError, or a bug: logged; check() and the repair retry
            log.error("host-gw: %s routes: %s", what, e)
            return [errno.EIO] * len(msgs)

    def _send_logged(self, msgs: List[bytes], what: str) -> int:
        """Send a batch, log each refusal; the number refused."""
        failed = self._send(msgs, what)
        for code in failed:
            log.error("host-gw: %s route: %s", what, os.strerror(code))
        return len(failed)

    def _identical(self, r: rtnl.RouteMsg, gw) -> bool:
        return r.gateway == int(gw) and r.oif == self.ext.index

    def _resync(self, prune: bool) -> None:
        """One kernel dump of the main table, then one batch: every wanted route that is missing
        or differs is replaced (conflicting routes to the same subnet deleted first), and with
        `prune` our stale routes (inside Network, through the external interface) deleted."""
        try:
            table: Dict[IPv4Network, List[rtnl.RouteMsg]] = {}
            for r in netlink.dump_routes():
                if r.plen and r.type == rtnl.RTN_UNICAST:
                    table.setdefault(IPv4Network((r.dst, r.plen)), []).append(r)
        except netlink.NetlinkError as e:
            log.error("host-gw: %s", e)
            return
        steps: List[Step] = []
        for sn, gw in self.routes.items():
            existing = table.get(sn, [])
            if any(self._identical(r, gw) for r in existing):
                continue
            for r in existing:
                log.warning("replacing route %s via %s dev #%d with via %s dev %s",
                            sn, r.gateway and IPv4Address(r.gateway), r.oif, gw, self.ext.name)
                steps.append(self._delete(sn, r.gateway, r.oif))
            steps.append(self._replace(sn, gw))
        if prune:
            steps += self._prune_steps(table)
        self._send_logged(self._build(steps), "sync")

    def _prune_steps(self, table: Dict[IPv4Network, List[rtnl.RouteMsg]]) -> List[Step]:
        if self.network is None:
            return []
        out = []
        for dst, routes in table.items():
            if not (dst.subnet_of(self.network) and dst != self.network and dst not in self.routes
                    and (self.lease is None or dst != self.lease.subnet)):
                continue
            for r in routes:
                if r.gateway is not None and r.oif == self.ext.index:
                    log.info("pruning stale host-gw route %s via %s", dst, IPv4Address(r.gateway))
                    out.append(self._delete(dst, r.gateway, r.oif))
        return out

    # -- repair from kernel notifications (agent/kernelwatch.py) ---------------------------------
    def _start_watch(self) -> None:
        if self._watch is not None:
            return
        try:
            self._watch = netlink.kernel_watch(self._on_kernel)
        except netlink.NetlinkError as e:
            log.warning("host-gw: no kernel notifications (%s); check() re-reads the routes every tick", e)

    def _on_kernel(self, changes: Changes) -> None:
        with self._lock:
            self._repair(changes)

    def _repair(self, changes: Changes) -> None:
        if changes.overflow or any(link.ifindex == self.ext.index for link in changes.links):
            self._resync(prune=False)         # lost notifications, or the link flapped
            return
        steps = []
        for r in changes.routes:
            if r.table != rtnl.RT_TABLE_MAIN or not r.plen:
                continue
            sn = IPv4Network((r.dst, r.plen))
            gw = self.routes.get(sn)
            # Ours and still wanted; our own deletions (a removed peer) are no longer in routes.
            if gw is not None and self._identical(r, gw):
                log.warning("Route to %s via %s was missing; re-adding it", sn, gw)
                metrics.REPAIRS.labels("route").inc()
                steps.append(self._replace(sn, gw))
        if steps:
            self._send_logged(self._build(steps), "repair")
