"""host-gw's IPv6 half (EnableIPv6): one route per dual-stack peer, `<peer IPv6 subnet> via <peer
PublicIPv6> dev <ext iface>` (flannel's hostgw GetV6Route; docs/flannel-compat.md §"Dual-stack").

`DualStackHostGw` wraps the IPv4 backend (agent/backends/hostgw.py, unchanged) and calls the
IPv6 routes after it for every lease event, so each family's state is kept by its own code. The
rules are the IPv4 half's: an identical route is left alone, another route to the subnet is
replaced, check() re-adds missing ones, sync_peers() prunes routes inside IPv6Network through the
external interface that belong to no live lease, a lease outside IPv6Network is never routed, and
one peer's error never stops the others'. A peer without an IPv6 subnet (an IPv4-only host of a
mixed cluster) gets its IPv4 route only, as in flannel.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
from typing import Dict, Iterable, Optional, Tuple

from .. import netlink6
from ..config import NetworkConfig
from ..errors import BackendError
from ..iface import ExternalInterface
from ..lease import Lease, LeaseAttrs, Slot
from ..peers import network6_problem
from .base import BackendOptions, DualStackPeers, Ipv6OnlyPeers
from .hostgw import HostGwBackend

log = logging.getLogger("fastflannel.hostgw")

IPv6Network = ipaddress.IPv6Network
IPv6Address = ipaddress.IPv6Address
Route = Tuple[IPv6Network, IPv6Address]          # (peer IPv6 subnet, its PublicIPv6)


class HostGwV6Routes:
    def __init__(self, ext: ExternalInterface, network6: IPv6Network):
        self.ext, self.network6 = ext, network6
        self.own: Optional[IPv6Network] = None
        self.routes: Dict[Slot, Route] = {}      # by the lease's slot (lease.Lease.slot)
        self._lock = threading.RLock()

    def wanted(self, lease: Lease) -> Optional[Route]:
        a, sn6 = lease.attrs, lease.ipv6_subnet
        if a is None or sn6 is None or a.public_ipv6 is None or a.backend_type != "host-gw" or sn6 == self.own:
            return None
        why = network6_problem(sn6, self.network6)
        if why is not None:
            log.warning("host-gw: refusing lease %s: %s", lease.key, why)
            return None
        return sn6, a.public_ipv6

    def add(self, lease: Lease) -> None:
        with self._lock:
            want = self.wanted(lease)
            old = self.routes.get(lease.slot)
            if old is not None and old != want:
                self._delete(old)
                del self.routes[lease.slot]
            if want is not None:
                self.routes[lease.slot] = want
                self._ensure(want, self._table())

    def remove(self, lease: Lease) -> None:
        with self._lock:
            route = self.routes.pop(lease.slot, None)
            if route is None and lease.attrs is not None:
                route = self.wanted(lease)           # never seen (removed before we started)
            if route is not None:
                self._delete(route)

    def sync(self, leases: Iterable[Lease]) -> None:
        with self._lock:
            wanted = {lease.slot: r for lease in leases if (r := self.wanted(lease)) is not None}
            for sn in [s for s in self.routes if self.routes[s] != wanted.get(s)]:
                self._delete(self.routes.pop(sn))
            self.routes.update(wanted)
            self.check()
            self._prune()

    def check(self) -> None:
        with self._lock:
            table = self._table()
            for route in self.routes.values():
                self._ensure(route, table)

    # -- kernel ---------------------------------------------------------------------------------
    def _table(self) -> Dict[IPv6Network, list]:
        table: Dict[IPv6Network, list] = {}
        for r in netlink6.routes6():
            table.setdefault(r.dst, []).append(r)
        return table

    def _ensure(self, route: Route, table: Dict[IPv6Network, list]) -> None:
        sn6, gw = route
        try:
            existing = table.get(sn6, [])
            if any(r.gateway == gw and r.oif == self.ext.index for r in existing):
                return
            for r in existing:
                log.warning("replacing route %s via %s with via %s dev %s", sn6, r.gateway, gw, self.ext.name)
                netlink6.route6_delete(sn6, r.gateway, r.oif)
            netlink6.route6_replace(sn6, gw, self.ext.index)
            log.info("host-gw route %s via %s dev %s", sn6, gw, self.ext.name)
        except Exception as e:  # NetlinkError, or a bug: this peer only; check() tries again
            log.error("host-gw: route %s via %s: %s", sn6, gw, e)

    def _delete(self, route: Route) -> None:
        sn6, gw = route
        log.info("removing host-gw route %s via %s", sn6, gw)
        try:
            netlink6.route6_delete(sn6, gw, self.ext.index)
        except Exception as e:  # the next peer is done all the same
            log.error("host-gw: removing the route %s via %s failed: %s", sn6, gw, e)

    def _prune(self) -> None:
        live = {r for r in self.routes.values()}
        for r in netlink6.routes6(self.ext.index):
            if (r.gateway is not None and r.dst.subnet_of(self.network6) and r.dst != self.network6
                    and r.dst != self.own and (r.dst, r.gateway) not in live):
                log.info("pruning stale host-gw route %s via %s", r.dst, r.gateway)
                self._delete((r.dst, r.gateway))


class DualStackHostGw(DualStackPeers, HostGwBackend):
    """host-gw with EnableIPv6: the IPv4 backend, then the IPv6 routes."""
    v6: HostGwV6Routes

    def __init__(self, ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions):
        super().__init__(ext, cfg, opts)
        assert cfg.ipv6_network is not None
        self.v6 = HostGwV6Routes(ext, cfg.ipv6_network)

    def lease_attrs(self) -> LeaseAttrs:
        return dataclasses.replace(super().lease_attrs(), public_ipv6=self.ext.ext_v6_addr)

    def setup(self, lease: Lease, cfg: NetworkConfig) -> None:
        super().setup(lease, cfg)
        self.v6.own = lease.ipv6_subnet


class Ipv6OnlyHostGw(Ipv6OnlyPeers):
    """host-gw in an IPv6-only network (EnableIPv4 false): the IPv6 routes alone; the lease has
    PublicIP 0.0.0.0 (docs/flannel-compat.md §"IPv6-only")."""
    name = "host-gw"
    v6: HostGwV6Routes

    def __init__(self, ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions):
        assert cfg.ipv6_network is not None
        if ext.ext_v6_addr != ext.iface_v6_addr:
            raise BackendError(f"host-gw requires the public IPv6 to be the interface's address (NAT?): "
                               f"public IPv6 {ext.ext_v6_addr} is not {ext.name}'s address {ext.iface_v6_addr}")
        self.ext = ext
        self.v6 = HostGwV6Routes(ext, cfg.ipv6_network)

    def mtu(self) -> int:
        return self.ext.mtu

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(ipaddress.IPv4Address(0), "host-gw", None, self.ext.ext_v6_addr)

    def setup(self, lease: Lease, cfg: NetworkConfig) -> None:
        self.v6.own = lease.ipv6_subnet

    def describe(self) -> dict:
        return {"device": self.ext.name}

    def close(self) -> None:
        pass          # flannel leaves its routes in place
