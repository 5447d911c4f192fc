"""The vxlan backend's per-peer kernel objects on flannel.<VNI>: programmed, removed, pruned and
repaired in batches (docs/flannel-compat.md §"vxlan per-peer state", docs/architecture.md
§"Scale").

A peer is a permanent neighbour, an FDB entry and a route (or one direct route). Every request of
a batch is built on its own, so an unexpected exception in one peer's request (a bug, bad data)
is logged and never stops the others, nor the rest of that peer's clean-up (docs/architecture.md
§"Lease admission"). Objects several leases share (a copied lease: the same MAC and PublicIP, one
FDB entry; two prefix lengths at one address, one neighbour) are counted in two indexes, so a
removal keeps what another peer still uses, and a deletion the kernel reports is mapped to its
peers, both in O(1) however many peers there are.

`PeerObjects` is a mixin of `VxlanBackend` (agent/backends/vxlan.py), which decides what each
lease becomes and owns the device and the MAC.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Set, Tuple

from .. import metrics, netlink, rtnl
from ..iface import ExternalInterface
from ..lease import Lease

if TYPE_CHECKING:
    from ..kernelwatch import Changes
    from .vxlan import VxlanParams

log = logging.getLogger("fastflannel.vxlan")

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
STEP_ATTEMPTS = 3            # flannel retries each step (10x with retry-go); a few is plenty here
STEP_RETRY_S = 0.05
Step = Tuple[str, Callable[[], bytes]]      # what (for the log), how to build its request


def _unindex(index: dict, key: object, subnet: IPv4Network) -> None:
    users = index.get(key)
    if users is not None:
        users.discard(subnet)
        if not users:
            del index[key]


@dataclass
class _Peer:
    lease: Lease
    public_ip: IPv4Address       # the lease's PublicIP (FDB dst, or the direct route's gateway)
    mac: Optional[str]           # None for a direct-routed peer
    direct: bool
    ok: bool = False             # False: programming failed, check() retries


class PeerObjects:
    """The peers' kernel state; the backend sets these attributes (see VxlanBackend.__init__)."""
    ext: ExternalInterface
    dev: str
    params: VxlanParams
    lease: Optional[Lease]
    network: Optional[IPv4Network]
    peers: Dict[IPv4Network, _Peer]
    _ifindex: int                                   # of self.dev, for the raw requests
    _by_vtep: Dict[int, Set[IPv4Network]]          # VTEP address -> subnets of the peers using it
    _by_fdb: Dict[Tuple[str, int], Set[IPv4Network]]   # (MAC, PublicIP) -> subnets

    # -- who uses which kernel object (O(1) per event, however many peers) ------------------------
    def _keep(self, p: _Peer) -> None:
        """`p` is now the peer of its subnet: self.peers and the sharing indexes follow."""
        self._forget(p.lease.subnet)
        self.peers[p.lease.subnet] = p
        if not p.direct:
            self._by_vtep.setdefault(int(p.lease.subnet.network_address), set()).add(p.lease.subnet)
            if p.mac:
                self._by_fdb.setdefault((p.mac, int(p.public_ip)), set()).add(p.lease.subnet)

    def _forget(self, subnet: IPv4Network) -> Optional[_Peer]:
        p = self.peers.pop(subnet, None)
        if p is not None and not p.direct:
            _unindex(self._by_vtep, int(subnet.network_address), subnet)
            if p.mac:
                _unindex(self._by_fdb, (p.mac, int(p.public_ip)), subnet)
        return p

    def _neigh_shared(self, p: _Peer) -> bool:
        """Another peer's VTEP has p's address (a lease of another prefix length at the same IP)."""
        return bool(self._by_vtep.get(int(p.lease.subnet.network_address), set()) - {p.lease.subnet})

    def _fdb_shared(self, p: _Peer) -> bool:
        """Another peer uses p's FDB entry (a copied lease: same MAC, same host)."""
        return bool(self._by_fdb.get((p.mac or "", int(p.public_ip)), set()) - {p.lease.subnet})

    # -- requests --------------------------------------------------------------------------------
    def _msgs(self, p: _Peer) -> List[bytes]:
        """The peer's objects in flannel's order, route last: neighbour, FDB entry, route."""
        sn, pub, idx = p.lease.subnet, p.public_ip, self._ifindex
        if p.direct:
            return [rtnl.route_replace(sn.network_address, sn.prefixlen, pub, self.ext.index)]
        assert p.mac is not None
        vtep = sn.network_address
        return [rtnl.neigh_replace(vtep, p.mac, idx), rtnl.fdb_replace(p.mac, idx, pub),
                rtnl.route_replace(vtep, sn.prefixlen, vtep, idx, onlink=True)]

    def _program(self, p: _Peer) -> bool:
        """All objects of one peer in one request batch, retried a few times; on failure what
        was added is removed again (no route without its neighbour and FDB entry), but what
        other peers share."""
        err = "no device"
        for attempt in range(STEP_ATTEMPTS):
            try:
                failed = netlink.send_batch(self._msgs(p))
            except netlink.NetlinkError as e:
                failed, err = [(0, e.errno or 0)], str(e)
            except Exception as e:  # not the kernel's refusal: a bug or bad data; no retry
                err = f"{type(e).__name__}: {e}"
                break
            if not failed:
                log.info("vxlan peer %s: %s at %s", p.lease.subnet, p.mac or "direct", p.public_ip)
                return True
            err = "; ".join(os.strerror(code) for _i, code in failed)
            if attempt < STEP_ATTEMPTS - 1:
                time.sleep(STEP_RETRY_S)
        log.error("vxlan: programming peer %s (%s at %s) failed: %s", p.lease.subnet, p.mac, p.public_ip, err)
        self._unprogram(p)
        return False

    def _program_many(self, peers: List[_Peer]) -> None:
        """Every peer's objects in one batch; a peer with a refused request goes the slow way,
        one whose requests cannot be built (a bug, bad data) is left for check() and never
        stops the others."""
        msgs: List[bytes] = []
        owner: List[_Peer] = []
        broken = set()
        for p in peers:
            try:
                m = self._msgs(p)
            except Exception as e:
                log.error("vxlan: peer %s: %s: %s", p.lease.subnet, type(e).__name__, e)
                broken.add(p.lease.subnet)
                continue
            msgs += m
            owner += [p] * len(m)
        try:
            failed = {owner[i].lease.subnet for i, _code in netlink.send_batch(msgs)}
        except Exception as e:  # NetlinkError, or a bug: every peer the slow way
            log.error("vxlan: %s", e)
            failed = {p.lease.subnet for p in owner}
        for p in peers:
            if p.lease.subnet in broken:
                p.ok = False
                self._unprogram(p)
            else:
                p.ok = p.lease.subnet not in failed or self._program(p)

    def _fdb_steps(self, p: _Peer) -> List[Step]:
        if not p.mac or self._fdb_shared(p):
            return []
        mac, idx, pub = p.mac, self._ifindex, p.public_ip
        return [(f"delete FDB {mac} dst {pub}", lambda: rtnl.fdb_delete(mac, idx, pub))]

    def _unprogram_steps(self, p: _Peer) -> List[Step]:
        sn, idx, net = p.lease.subnet, self._ifindex, p.lease.subnet.network_address
        if p.direct:
            return [(f"delete route {sn} via {p.public_ip}",
                     lambda: rtnl.route_delete(net, sn.prefixlen, p.public_ip))]
        steps: List[Step] = []
        if not self._neigh_shared(p):
            steps.append((f"delete neighbour {net}", lambda: rtnl.neigh_delete(net, idx)))
        steps += self._fdb_steps(p)
        return steps + [(f"delete route {sn}", lambda: rtnl.route_delete(net, sn.prefixlen, None, idx))]

    def _unprogram(self, p: _Peer) -> None:
        """Delete p's kernel state but what other peers still use, in one batch; every step
        runs, whatever another one raises."""
        if not self._ifindex and not p.direct:
            return
        self._delete(self._unprogram_steps(p))

    def _delete(self, steps: List[Step]) -> None:
        """Deletions: each request built on its own (one that raises is logged and skipped), then
        one batch; what the kernel no longer holds is fine."""
        msgs = []
        for what, build in steps:
            try:
                msgs.append(build())
            except Exception as e:  # a clean-up step must never skip the next ones
                log.warning("vxlan: %s failed unexpectedly: %s: %s", what, type(e).__name__, e)
        try:
            for _i, code in netlink.send_batch(msgs):
                log.debug("ignored: a deletion failed: %s", os.strerror(code))
        except Exception as e:
            log.warning("vxlan: deleting kernel state: %s", e)

    # -- reconciliation --------------------------------------------------------------------------
    def _prune(self, wanted: Dict[IPv4Network, Lease]) -> None:
        """Remove kernel state on flannel.<VNI> (and direct routes) that belongs to no live lease:
        kernel-filtered dumps of the device, one batch of deletions."""
        if self.network is None or not self._ifindex or not netlink.link_exists(self.dev):
            return
        net, idx = self.network, self._ifindex
        vteps = {int(sn.network_address) for sn in wanted}
        macs = {p.mac for p in self.peers.values() if p.mac}
        msgs: List[bytes] = []
        try:
            devs = [idx] + ([self.ext.index] if self.params.direct_routing else [])
            for oif in devs:
                for r in netlink.dump_routes(oif):
                    dst = IPv4Network((r.dst, r.plen))
                    if (r.gateway and dst.subnet_of(net) and dst != net and dst not in wanted
                            and (self.lease is None or dst != self.lease.subnet)):
                        log.info("pruning stale route %s via %s dev #%d", dst, IPv4Address(r.gateway), oif)
                        msgs.append(rtnl.route_delete(r.dst, r.plen, r.gateway, oif))
            for n in netlink.dump_neighbours(idx):
                if (n.state & netlink.NUD_PERMANENT and n.dst is not None and IPv4Address(n.dst) in net
                        and n.dst not in vteps):
                    log.info("pruning stale neighbour %s lladdr %s dev %s", IPv4Address(n.dst), n.mac, self.dev)
                    msgs.append(rtnl.neigh_delete(n.dst, idx))
            for e in netlink.dump_neighbours(idx, fdb=True):
                if e.dst is not None and e.mac and e.mac != "00:00:00:00:00:00" and e.mac not in macs:
                    log.info("pruning stale FDB entry %s dst %s dev %s", e.mac, IPv4Address(e.dst), self.dev)
                    msgs.append(rtnl.fdb_delete(e.mac, idx, e.dst))
            netlink.send_batch(msgs)
        except netlink.NetlinkError as e:
            log.warning("vxlan: pruning stale state: %s", e)

    def _missing(self, p: _Peer, routes: set, neigh: set, fdb: set) -> List[str]:
        """The kinds of p's kernel objects (route, neighbour, fdb) not in the dumps."""
        sn, pub = p.lease.subnet, int(p.public_ip)
        vtep = int(sn.network_address)
        if p.direct:
            return [] if (vtep, sn.prefixlen, pub) in routes else ["route"]
        present = {"route": (vtep, sn.prefixlen, vtep) in routes, "neighbour": (vtep, p.mac) in neigh,
                   "fdb": (p.mac, pub) in fdb}
        return [kind for kind, here in present.items() if not here]

    def _repair_peers(self) -> None:
        """Re-program peers that failed or lost their neighbour, FDB entry or route: one filtered
        dump per object type, one batch."""
        try:
            routes = {(r.dst, r.plen, r.gateway) for oif in {self._ifindex, self.ext.index}
                      for r in netlink.dump_routes(oif)}
            neigh = {(n.dst, n.mac) for n in netlink.dump_neighbours(self._ifindex)}
            fdb = {(e.mac, e.dst) for e in netlink.dump_neighbours(self._ifindex, fdb=True)}
        except netlink.NetlinkError as e:
            log.warning("vxlan: cannot read kernel state: %s", e)
            return
        broken = []
        for p in self.peers.values():
            missing = self._missing(p, routes, neigh, fdb)
            if p.ok and missing:
                log.warning("vxlan peer %s lost kernel state; re-programming it", p.lease.subnet)
                for kind in missing:
                    metrics.REPAIRS.labels(kind).inc()
            if missing or not p.ok:
                broken.append(p)
        self._program_many(broken)

    # -- repair from kernel notifications (agent/kernelwatch.py) ---------------------------------
    def _repair_reported(self, changes: Changes) -> None:
        """Re-program the peers one of whose objects was deleted (looked up in the sharing
        indexes: O(1) per notification); our own deletions (peers we removed, an old MAC's FDB
        entry) name no current peer's object and are ignored."""
        idx = self._ifindex
        hit: Set[IPv4Network] = set()
        for r in changes.routes:
            p = self.peers.get(IPv4Network((r.dst, r.plen))) if r.table == rtnl.RT_TABLE_MAIN and r.plen else None
            if p is not None and r.gateway == (int(p.public_ip) if p.direct else r.dst):
                hit.add(p.lease.subnet)
                metrics.REPAIRS.labels("route").inc()
        for n in changes.neighbours:
            if n.ifindex != idx or n.dst is None:
                continue
            kind, users = (("neighbour", self._by_vtep.get(n.dst, set())) if n.family == rtnl.AF_INET else
                           ("fdb", self._by_fdb.get((n.mac, n.dst), set())) if n.mac else ("", set()))
            if users:
                metrics.REPAIRS.labels(kind).inc()
                hit |= users
        for sn in hit:
            log.warning("vxlan peer %s lost kernel state; re-programming it", sn)
        self._program_many([p for sn, p in self.peers.items() if sn in hit or not p.ok])
