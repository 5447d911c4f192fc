"""host-gw backend: one plain route per peer, `<peer subnet> via <peer PublicIP> dev <ext iface>`
(docs/flannel-compat.md §"host-gw"; flannel's backend/hostgw and route_network.go). Hosts must
share a link.

A route with the same destination but another gateway or device is replaced, an identical one is
left alone; every check() (the daemon calls it every 10 s) re-adds routes that went missing;
sync_peers() also removes routes inside Network through the external interface that belong to no
live lease (flannel leaves those behind after a restart).

Nothing is shared between peers: two leases with the same PublicIP (a copied lease) have one
route each, to their own subnet, so removing one never touches the other's. A lease outside
Network is never routed (docs/architecture.md §"Lease admission"), and an error in one peer's
route never stops the others'.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Dict, Iterable, List, Optional

from .. import metrics, netlink
from ..config import NetworkConfig
from ..errors import BackendError
from ..iface import ExternalInterface
from ..lease import Lease, LeaseAttrs
from ..peers import network_problem
from .base import BackendOptions

log = logging.getLogger("fastflannel.hostgw")

IPv4Network = ipaddress.IPv4Network


class HostGwBackend:
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
                self.routes[lease.subnet] = gw
                self._ensure_route(lease.subnet, gw)
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
            try:
                netlink.route_delete(lease.subnet, gw, self.ext.name)
            except Exception as e:  # NetlinkError, or a bug: the next peer is done all the same
                log.error("host-gw: removing the route %s via %s failed: %s", lease.subnet, gw, e)

    def sync_peers(self, leases: Iterable[Lease]) -> None:
        with self._lock:
            wanted = {lease.subnet: gw for lease in leases if (gw := self._gateway(lease)) is not None}
            for sn in [s for s in self.routes if s not in wanted]:
                self.remove_peer(Lease(sn, None))
            self.routes.update(wanted)
            table = self._routes_by_dst()
            for sn, gw in wanted.items():
                self._ensure_route(sn, gw, table)
            self._prune()

    def check(self) -> None:
        with self._lock:
            table = self._routes_by_dst()
            for sn, gw in self.routes.items():
                if not any(self._identical(r, gw) for r in table.get(sn, ())):
                    log.warning("Route to %s via %s was missing; re-adding it", sn, gw)
                    metrics.REPAIRS.labels("route").inc()
                    self._ensure_route(sn, gw, table)

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
        pass          # flannel leaves its routes in place

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

    def _routes_by_dst(self) -> Dict[IPv4Network, List[netlink.Route]]:
        table: Dict[IPv4Network, List[netlink.Route]] = {}
        for r in netlink.route_list():
            table.setdefault(r.dst, []).append(r)
        return table

    def _identical(self, r: netlink.Route, gw) -> bool:
        return r.gateway == gw and r.oif == self.ext.index

    def _ensure_route(self, sn: IPv4Network, gw, table=None) -> None:
        """Add `sn via gw dev ext`; delete conflicting routes to sn first, skip an identical one.
        `table` is one route dump shared by a whole sync/check pass."""
        try:
            existing = (table if table is not None else self._routes_by_dst()).get(sn, [])
            identical = False
            for r in existing:
                if self._identical(r, gw) and not identical:
                    identical = True
                else:
                    log.warning("replacing route %s via %s dev %s with via %s dev %s",
                                sn, r.gateway, r.dev, gw, self.ext.name)
                    netlink.route_delete(sn, r.gateway, r.oif)
            if not identical:
                netlink.route_replace(sn, gw, self.ext.name)
                log.info("host-gw route %s via %s dev %s", sn, gw, self.ext.name)
        except Exception as e:  # NetlinkError, or a bug: this peer only; check() tries again
            log.error("host-gw: route %s via %s: %s", sn, gw, e)

    def _prune(self) -> None:
        if self.network is None:
            return
        for r in netlink.route_list(self.ext.name):
            if (r.gateway is not None and r.dst.subnet_of(self.network) and r.dst != self.network
                    and r.dst not in self.routes and (self.lease is None or r.dst != self.lease.subnet)):
                log.info("pruning stale host-gw route %s via %s", r.dst, r.gateway)
                try:
                    netlink.route_delete(r.dst, r.gateway, self.ext.name)
                except netlink.NetlinkError as e:
                    log.error("host-gw: %s", e)
