"""The cache of other hosts' leases: flannel's LeaseWatcher (docs/flannel-compat.md §"Watch").

Backends need the *last known* attrs of a peer when it goes away (its PublicIP, its VTEP MAC),
but an etcd DELETE event carries only the key. The tracker keeps every live peer lease and
turns raw registry events into backend events:

* ADDED replaces the cached lease of that subnet or appends a new one;
* REMOVED hands back the cached lease; an unknown subnet is logged and dropped;
* events for our own subnet are dropped (the LeaseKeeper handles those);
* `reset()` diffs a full listing against the cache. Unlike flannel, whose first snapshot only
  produces adds, the daemon gets REMOVED events for peers that vanished between two listings
  (after a compaction re-list) and uses `leases()` with the backends' `sync_peers()` to prune
  state left by peers that vanished while it was down.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, Iterable, List

from .lease import IPv4Network, Lease, LeaseEvent

log = logging.getLogger("fastflannel.peers")


class PeerTracker:
    def __init__(self, own_subnet: IPv4Network):
        self.own_subnet = own_subnet
        self._cache: Dict[IPv4Network, Lease] = {}      # insertion order = arrival order
        self._lock = threading.Lock()

    def leases(self) -> List[Lease]:
        """The current peer leases (never our own)."""
        with self._lock:
            return list(self._cache.values())

    def reset(self, leases: Iterable[Lease]) -> List[LeaseEvent]:
        """Replace the cache with a full listing; return the differences as events.

        REMOVED events come first, so a backend never deletes a route it has just installed
        when a subnet was replaced by one of another size."""
        fresh: Dict[IPv4Network, Lease] = {}
        for lease in leases:
            if lease.subnet == self.own_subnet:
                continue
            if lease.attrs is None:
                log.warning("Ignoring lease %s without attributes in a listing", lease.subnet)
                continue
            fresh[lease.subnet] = lease
        with self._lock:
            old, self._cache = self._cache, fresh
        removed = [LeaseEvent(LeaseEvent.REMOVED, lease) for net, lease in old.items() if net not in fresh]
        added = [LeaseEvent(LeaseEvent.ADDED, lease) for net, lease in fresh.items()
                 if net not in old or old[net].attrs != lease.attrs]
        return removed + added

    def apply(self, events: Iterable[LeaseEvent]) -> List[LeaseEvent]:
        """Update the cache from watch events; return the events backends should see."""
        out: List[LeaseEvent] = []
        with self._lock:
            for ev in events:
                subnet = ev.lease.subnet
                if subnet == self.own_subnet:
                    continue
                if ev.kind == LeaseEvent.ADDED:
                    if ev.lease.attrs is None:
                        log.warning("Ignoring added subnet %s without attributes", subnet)
                        continue
                    self._cache[subnet] = ev.lease
                    out.append(ev)
                elif ev.kind == LeaseEvent.REMOVED:
                    cached = self._cache.pop(subnet, None)
                    if cached is None:
                        log.info("Removed subnet (%s) was not found", subnet)
                        continue
                    out.append(LeaseEvent(LeaseEvent.REMOVED, cached))
                else:
                    log.warning("Ignoring lease event of unknown kind %r for %s", ev.kind, subnet)
        return out
