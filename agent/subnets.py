"""Lease policy: which subnet this host takes, and keeping it (docs/flannel-compat.md
§"Acquisition", §"TTL and renewal", §"Reservations").

`SubnetManager.acquire` follows flannel's `tryAcquireLease` order:
  1. reuse the first lease (etcd key order) whose PublicIP is ours; delete it if it no longer fits
     the config;
  2. reuse the subnet remembered in subnet.env, only if no lease overlaps it and it fits;
  3. pick at random among the first 100 free aligned subnets in [SubnetMin, SubnetMax].

Deliberate differences from flannel v0.18+ (each fixes a fault of flannel's):
* A lost create race (`SubnetExists`) is retried, up to RACE_RETRIES attempts; flannel v3 exits.
* A reservation (a key without TTL, `expiration is None`) reused by PublicIP stays a reservation
  (ttl 0) and is never renewed; flannel v3 sees TTL -1 and turns it into a 24 h lease (#1329).
* The previous subnet is refused when any lease *overlaps* it, not only an identical one.
* `LeaseKeeper` checks the PublicIP of its own key: if another host holds our subnet (it expired
  during a partition and was re-allocated, #1343/#1289), we stop with LeaseLost instead of
  treating the other host's lease as our renewal and overwriting it later. A deleted own key is
  re-created with a create-if-absent transaction instead of shutting the daemon down (#904);
  a re-created dual-stack key that an earlier key shares a half with is given up (LeaseLost).

Dual-stack (EnableIPv6, docs/flannel-compat.md §"Dual-stack"): a lease holds an IPv4 and an IPv6
subnet under one key; both must fit the config for a lease to be reused (flannel's
isSubnetConfigCompat and isIPv6SubnetConfigCompat, so a v4-only lease is not reused by a
dual-stack host, nor a dual-stack one by a v4-only host: it is deleted and a new one taken); the
previous subnets of subnet.env are reused only as a pair; a new lease takes a free subnet of each
family. Unlike flannel, a create is checked afterwards for an earlier key sharing either half
(`v4&v6` keys are unique only as pairs; the later-created gives its key up), an IPv4-only lease
never blocks the IPv6 window (flannel v0.20.2 dereferences its missing IPv6 subnet), and the
previous IPv6 subnet is refused when a lease overlaps it.

IPv6-only (EnableIPv4 false, docs/flannel-compat.md §"IPv6-only"): only the IPv6 subnet is
allocated, under the IPv4 placeholder 0.0.0.0/0 that every such lease shares; our lease is found
by PublicIPv6 (flannel's match on PublicIP 0.0.0.0 takes another host's) and the previous
FLANNEL_IPV6_SUBNET, and the keeper tells hosts apart by PublicIPv6 (`holds`).

Lease admission (docs/architecture.md §"Lease admission"):
* A lease that covers several subnets of the window (another prefix length, shorter than
  SubnetLen: `10.0.0.0/8`, a `/12` in a network of `/20`s) never blocks allocation, nor the
  previous subnet; a lease at a SubnetLen key or a smaller one does (its key exists).
* Of several leases with our PublicIP (a copied lease, a reservation beside our lease), the one
  of our previous subnet is reused, else the first that fits the config.
* A subnet lost in a race is not tried again by the same acquisition.
* The keeper answers any event for our subnet that is not our own value (another host's
  PublicIP, other attrs, a DELETE) by reading our key: another host's lease there is a lost lease;
  our own (the event came from another spelling of our key, or someone changed our value) is put
  back with our attrs, so peers that followed the event learn our lease again. `announce(attrs)`
  puts new attrs (a new VTEP MAC) at once.
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import random
import threading
import time
from typing import AbstractSet, Callable, List, Optional, Sequence, Set, Tuple

from .config import NetworkConfig
from .errors import LeaseLost, OutOfSubnets, RegistryError, SubnetExists
from .lease import (
    NO_SUBNET,
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    Slot,
    subnet_key,
)
from .registry_api import LeaseStore

SUBNET_TTL_S = 86400        # flannel's hard-coded subnetTTL (24 h)
RACE_RETRIES = 10           # attempts at acquiring before giving up
RENEW_RETRY_S = 60          # wait after a failed renewal ("trying again in 1 min")
MAX_CANDIDATES = 100        # free subnets flannel collects before picking one at random
RECREATE_RETRIES = 3        # re-create attempts when our key flickers between deleted and present
REANNOUNCE_MIN_S = 5.0      # at most one look at our key (and re-put) per 5 s, whatever the events

_log = logging.getLogger("fastflannel.subnets")


def _free_starts(taken: Sequence[Tuple[int, int]], first: int, last: int, size: int,
                 limit: int) -> List[int]:
    """The first `limit` aligned starts in [first, last], step `size`, whose block overlaps no
    taken (lo, hi) range.

    flannel tests each candidate against every lease (O(candidates x leases)); merging the taken
    ranges once and jumping over them gives the same answer in O(leases log leases + limit)."""
    starts: List[int] = []
    ends: List[int] = []
    for lo, hi in sorted(taken):                 # merge overlapping/nested ranges
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    ip = first
    out: List[int] = []
    while ip <= last and len(out) < limit:
        i = bisect.bisect_right(starts, ip + size - 1) - 1    # last range starting inside or before
        if i >= 0 and ends[i] >= ip:                           # it reaches into the candidate
            ip = (ends[i] // size + 1) * size                  # next aligned start after it
            continue
        out.append(ip)
        ip += size
    return out


def _free_candidates(cfg: NetworkConfig, taken: Sequence[IPv4Network], limit: int) -> List[IPv4Network]:
    """The first `limit` aligned subnets in [SubnetMin, SubnetMax] that overlap no taken subnet."""
    spans = [(int(n.network_address), int(n.broadcast_address)) for n in taken]
    starts = _free_starts(spans, int(cfg.subnet_min), int(cfg.subnet_max), cfg.subnet_size, limit)
    return [IPv4Network((ip, cfg.subnet_len)) for ip in starts]


def _free_ipv6_candidates(cfg: NetworkConfig, taken: Sequence[IPv6Network], limit: int) -> List[IPv6Network]:
    """The same for [IPv6SubnetMin, IPv6SubnetMax] (flannel's OuterLoopv6)."""
    if cfg.ipv6_subnet_min is None or cfg.ipv6_subnet_max is None:
        return []
    spans = [(int(n.network_address), int(n.broadcast_address)) for n in taken]
    starts = _free_starts(spans, int(cfg.ipv6_subnet_min), int(cfg.ipv6_subnet_max),
                          1 << (128 - cfg.ipv6_subnet_len), limit)
    return [IPv6Network((ip, cfg.ipv6_subnet_len)) for ip in starts]


def _blocking(cfg: NetworkConfig, leases: Sequence[Lease]) -> List[Lease]:
    """The leases allocation must keep clear of: those of SubnetLen or smaller. A lease covering
    several subnets is not a host's (admission refuses it) and must not take them all away."""
    return [lease for lease in leases if lease.subnet.prefixlen >= cfg.subnet_len]


class SubnetManager:
    def __init__(self, registry: LeaseStore, config: NetworkConfig, public_ip: IPv4Address,
                 prev_subnet: Optional[IPv4Network] = None, renew_margin_s: int = 3600,
                 rng: Optional[random.Random] = None, clock: Callable[[], float] = time.time,
                 log: Optional[logging.Logger] = None, prev_ipv6_subnet: Optional[IPv6Network] = None,
                 public_ipv6: Optional[IPv6Address] = None):
        self.registry = registry
        self.config = config
        self.public_ip = IPv4Address(public_ip)
        self.prev_subnet = prev_subnet
        self.prev_ipv6_subnet = prev_ipv6_subnet            # FLANNEL_IPV6_SUBNET of subnet.env
        self.public_ipv6 = public_ipv6                      # our identity in an IPv6-only network
        self.renew_margin_s = renew_margin_s
        self.rng = rng if rng is not None else random.Random()
        self.clock = clock
        self.log = log or _log

    # -- acquiring ------------------------------------------------------------------------------
    def acquire(self, attrs: LeaseAttrs) -> Lease:
        """Take a lease for this host; raise OutOfSubnets, RegistryError or other registry errors."""
        lost: Set[Slot] = set()         # subnets another host created first (IPv6-only: IPv6 ones)
        for attempt in range(1, RACE_RETRIES + 1):
            try:
                return self._try_acquire(attrs, lost)
            except SubnetExists as e:
                self.log.info("Lost a race for a subnet (%s); retrying (attempt %d of %d)",
                              e, attempt, RACE_RETRIES)
        raise RegistryError(f"max retries reached trying to acquire a subnet "
                            f"({RACE_RETRIES} races lost against other hosts)")

    def _try_acquire(self, attrs: LeaseAttrs, lost: Set[Slot]) -> Lease:
        leases, _rev = self.registry.list_leases()
        mine = self._own_lease(leases)
        if mine is not None:
            if self.config.lease_compatible(mine.subnet, mine.ipv6_subnet):
                return self._reuse(mine, attrs)
            self.log.info("Found lease (%s) for current IP (%s) but not compatible with current "
                          "config, deleting", mine.key, self.host)
            self.registry.delete_lease(mine.subnet, mine.ipv6_subnet)
            leases = [lease for lease in leases if lease.key != mine.key]
        if self.config.ipv6_only:
            subnet, subnet6 = NO_SUBNET, self._previous6(leases, lost) or self._allocate6(leases, lost)
        else:
            taken = _blocking(self.config, leases)
            pair = self._previous_pair(taken, leases, lost)
            subnet, subnet6 = pair if pair is not None else (self._allocate(taken, lost),
                                                             self._allocate6(leases, lost))
        try:
            lease = self.registry.create_lease(subnet, attrs, SUBNET_TTL_S, subnet6)
        except SubnetExists:
            lost.add(subnet6 if self.config.ipv6_only and subnet6 is not None else subnet)
            raise
        earlier = self.earlier_holder(lease)
        if earlier is not None:
            self.log.info("Lease %s (created first, by %s) shares a subnet with ours (%s); "
                          "giving ours up", earlier.key, earlier.public_address, lease.key)
            self.registry.delete_lease(lease.subnet, lease.ipv6_subnet)
            lost.update(self._shared_halves(earlier, lease))
            raise SubnetExists(f"subnet already leased by an earlier key: {earlier.key}")
        self.log.info("Allocated lease %s for %s", subnet_key(subnet, subnet6), self.host)
        return lease

    def earlier_holder(self, lease: Lease) -> Optional[Lease]:
        """A key created before our just-created `lease` that shares one of its subnets, else None.

        A key with an IPv6 half is unique only as a pair: etcd's create-if-absent lets two hosts
        that picked one IPv4 subnet with different IPv6 ones (or the reverse) both succeed, and
        flannel stops there. Of two such keys the earlier-created keeps the subnets; the later
        host reads after both creates, so it always sees the other. IPv4-only keys are unique
        by their subnet already: no read."""
        if lease.ipv6_subnet is None:
            return None
        leases, _rev = self.registry.list_leases()
        ours = next((x for x in leases if x.key == lease.key), lease)
        for other in leases:
            if (other.key != lease.key and (other.created, other.key) < (ours.created, ours.key)
                    and self._shared_halves(other, lease)):
                return other
        return None

    def _shared_halves(self, other: Lease, lease: Lease) -> List[Slot]:
        """The subnets of `lease` that `other` (a lease of SubnetLen or longer) also covers."""
        cfg = self.config
        out: List[Slot] = []
        if (lease.subnet != NO_SUBNET and other.subnet.prefixlen >= cfg.subnet_len
                and other.subnet.overlaps(lease.subnet)):
            out.append(lease.subnet)
        if (lease.ipv6_subnet is not None and other.ipv6_subnet is not None
                and other.ipv6_subnet.prefixlen >= cfg.ipv6_subnet_len
                and other.ipv6_subnet.overlaps(lease.ipv6_subnet)):
            out.append(lease.ipv6_subnet)
        return out

    @property
    def host(self) -> str:
        """This host's identity in logs: PublicIPv6 in an IPv6-only network, else PublicIP."""
        return str(self.public_ipv6 if self.config.ipv6_only else self.public_ip)

    def holds(self, lease: Lease) -> bool:
        """The lease is this host's: it carries our PublicIP, or in an IPv6-only network (where
        every lease has PublicIP 0.0.0.0) our PublicIPv6."""
        if self.config.ipv6_only:
            return self.public_ipv6 is not None and lease.public_ipv6 == self.public_ipv6
        return lease.public_ip == self.public_ip

    def _own_lease(self, leases: Sequence[Lease]) -> Optional[Lease]:
        """flannel reuses the first lease with our PublicIP in key order; of several, ours is the
        one of the previous subnet, else the first that fits the config (a copy of our lease or a
        reservation under another key must not move us). IPv6-only: by PublicIPv6 and the
        previous IPv6 subnet (flannel's match on PublicIP 0.0.0.0 would take another host's)."""
        mine = [lease for lease in leases if self.holds(lease)]
        if len(mine) > 1:
            self.log.warning("%d leases carry this host's address %s: %s", len(mine), self.host,
                             ", ".join(lease.key for lease in mine))
        fitting = [lease for lease in mine if self.config.lease_compatible(lease.subnet, lease.ipv6_subnet)]
        if self.config.ipv6_only:
            prev = [lease for lease in fitting if lease.ipv6_subnet == self.prev_ipv6_subnet]
        else:
            prev = [lease for lease in fitting if lease.subnet == self.prev_subnet]
        best = prev or fitting or mine
        return best[0] if best else None

    def _previous6(self, leases: Sequence[Lease], lost: Set[Slot]) -> Optional[IPv6Network]:
        """IPv6-only: the IPv6 subnet of subnet.env, if it fits the config and no lease's IPv6
        subnet overlaps it (IPv6-only leases all share the IPv4 half 0.0.0.0/0, which blocks
        nothing)."""
        prev6 = self.prev_ipv6_subnet
        if prev6 is None or prev6 in lost:
            return None
        if not self.config.ipv6_subnet_compatible(prev6):
            self.log.error("Found previously leased IPv6 subnet (%s) that is not compatible with "
                           "the network config, ignoring", prev6)
            return None
        holder = next((lease for lease in leases
                       if lease.ipv6_subnet is not None and lease.ipv6_subnet.overlaps(prev6)), None)
        if holder is not None:
            self.log.error("Found lease (%s, held by %s) matching previously leased IPv6 subnet (%s), "
                           "ignoring", holder.key, holder.public_ipv6, prev6)
            return None
        self.log.info("Found previously leased IPv6 subnet (%s), reusing", prev6)
        return prev6

    def _reuse(self, mine: Lease, attrs: LeaseAttrs) -> Lease:
        reservation = mine.expiration is None
        self.log.info("Found %s (%s) for current IP (%s), reusing",
                      "reservation" if reservation else "lease", mine.key, self.host)
        return self.registry.update_lease(mine.subnet, attrs, 0 if reservation else SUBNET_TTL_S,
                                          mine.ipv6_subnet)

    def _previous_pair(self, taken: Sequence[Lease], leases: Sequence[Lease],
                       lost: Set[Slot]) -> Optional[Tuple[IPv4Network, Optional[IPv6Network]]]:
        """The subnets of subnet.env, reused only together: the IPv6 one must fit the config
        too (absent when EnableIPv6 is off, present when on) and be free."""
        prev = self._previous_subnet(taken, lost)
        if prev is None:
            return None
        prev6 = self.prev_ipv6_subnet if self.config.enable_ipv6 else None
        if prev6 is not None and prev6 in lost:
            return None
        if not self.config.ipv6_subnet_compatible(prev6):
            self.log.error("Found previously leased IPv6 subnet (%s) that is not compatible with "
                           "the network config, ignoring the previous subnets", prev6)
            return None
        holder = next((lease for lease in leases if prev6 is not None and lease.ipv6_subnet is not None
                       and lease.ipv6_subnet.overlaps(prev6)), None)
        if holder is not None:
            self.log.error("Found lease (%s, held by %s) matching previously leased IPv6 subnet (%s), "
                           "ignoring the previous subnets", holder.key, holder.public_ip, prev6)
            return None
        return prev, prev6

    def _previous_subnet(self, taken: Sequence[Lease], lost: Set[Slot]) -> Optional[IPv4Network]:
        prev = self.prev_subnet
        if prev is None or prev in lost:
            return None
        holder = next((lease for lease in taken if lease.subnet.overlaps(prev)), None)
        if holder is not None:
            self.log.error("Found lease (%s, held by %s) matching previously leased subnet (%s), ignoring",
                           holder.subnet, holder.public_ip, prev)
            return None
        if not self.config.subnet_compatible(prev):
            self.log.error("Found previously leased subnet (%s) that is not compatible with the "
                           "network config, ignoring", prev)
            return None
        self.log.info("Found previously leased subnet (%s), reusing", prev)
        return prev

    def _allocate(self, taken: Sequence[Lease], lost: Set[Slot]) -> IPv4Network:
        cfg = self.config
        self.log.info("Picking subnet in range %s ... %s", cfg.subnet_min, cfg.subnet_max)
        lost4 = sorted(sn for sn in lost if isinstance(sn, IPv4Network))
        free = _free_candidates(cfg, [lease.subnet for lease in taken] + lost4, MAX_CANDIDATES)
        if not free:
            raise OutOfSubnets(f"out of subnets: no free /{cfg.subnet_len} left in range "
                               f"{cfg.subnet_min} ... {cfg.subnet_max} ({len(taken)} leases)")
        return self.rng.choice(free)

    def _allocate6(self, leases: Sequence[Lease], lost: AbstractSet[Slot] = frozenset()) -> Optional[IPv6Network]:
        """A free IPv6 subnet when EnableIPv6 (flannel's allocateSubnet, IPv6 half), else None."""
        cfg = self.config
        if not cfg.enable_ipv6:
            return None
        self.log.info("Picking ipv6 subnet in range %s ... %s", cfg.ipv6_subnet_min, cfg.ipv6_subnet_max)
        taken = [lease.ipv6_subnet for lease in leases
                 if lease.ipv6_subnet is not None and lease.ipv6_subnet.prefixlen >= cfg.ipv6_subnet_len]
        taken += [sn for sn in lost if isinstance(sn, IPv6Network)]
        free = _free_ipv6_candidates(cfg, taken, MAX_CANDIDATES)
        if not free:
            raise OutOfSubnets(f"out of subnets: no free IPv6 /{cfg.ipv6_subnet_len} left in range "
                               f"{cfg.ipv6_subnet_min} ... {cfg.ipv6_subnet_max} ({len(taken)} leases)")
        return self.rng.choice(free)

    # -- keeping --------------------------------------------------------------------------------
    def renew(self, lease: Lease) -> Lease:
        """Re-put the lease with a fresh 24 h TTL (flannel's updateSubnet); a reservation is
        returned unchanged, it never expires."""
        if lease.expiration is None:
            return lease
        if lease.attrs is None:               # only REMOVED events lack attrs: a caller's bug
            raise ValueError(f"cannot renew {lease.subnet} without its attrs")
        return self.registry.update_lease(lease.subnet, lease.attrs, SUBNET_TTL_S, lease.ipv6_subnet)

    def renew_delay(self, lease: Lease) -> float:
        """Seconds until the renewal is due (expiration - now - margin, at least 0); math.inf for
        a reservation."""
        if lease.expiration is None:
            return math.inf
        return max(0.0, lease.expiration - self.clock() - self.renew_margin_s)


class LeaseKeeper:
    """Keeps our lease alive and notices when it is taken away (flannel's CompleteLease).

    `run(stop)` renews at expiry - margin; `on_event(ev)` is fed the watch events for our own
    subnet by the daemon's watch thread; `announce(attrs)` puts new attrs now. Registry calls
    happen only in run()'s thread, so a slow etcd never blocks the watch. `clock` and
    `wait(timeout)` are injectable for tests; the default wait sleeps until the timeout, a stop,
    or an event that changes the schedule.
    """

    POLL_S = 0.5                    # how often the default wait looks at the stop event

    def __init__(self, manager: SubnetManager, lease: Lease,
                 clock: Optional[Callable[[], float]] = None,
                 wait: Optional[Callable[[float], None]] = None,
                 log: Optional[logging.Logger] = None):
        self.manager = manager
        self.clock = clock or manager.clock
        self.log = log or manager.log
        self._wait = wait or self._default_wait
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop: Optional[threading.Event] = None
        if lease.attrs is None:
            raise ValueError(f"LeaseKeeper needs our own lease with its attrs, got {lease}")
        self._lease = lease
        self._attrs: LeaseAttrs = lease.attrs
        self._lost: Optional[LeaseLost] = None
        self._removed = False
        self._retry_at: Optional[float] = None    # set after a failed registry call
        self._verify = False                      # look at our key and put our attrs back
        self._next_verify = 0.0                   # not before (REANNOUNCE_MIN_S after the last)

    @property
    def lease(self) -> Lease:
        with self._lock:
            return self._lease

    def announce(self, attrs: LeaseAttrs) -> None:
        """Our lease carries `attrs` from now on (e.g. a new VTEP MAC): put them at once."""
        with self._lock:
            self._attrs = attrs
            self._lease = dataclasses.replace(self._lease, attrs=attrs)
            self._verify, self._next_verify = True, 0.0
        self._wake.set()

    # -- events from the watch thread -----------------------------------------------------------
    def on_event(self, ev: LeaseEvent) -> None:
        with self._lock:
            subnet = self._lease.slot
            if ev.lease.slot != subnet or self._lost is not None:
                return
            if ev.kind == LeaseEvent.ADDED:
                if ev.lease.attrs is None:
                    self.log.warning("Ignoring added event without attributes for our subnet %s", subnet)
                    return
                if (self.manager.holds(ev.lease) and ev.lease.attrs == self._attrs
                        and ev.lease.ipv6_subnet == self._lease.ipv6_subnet):
                    # Our own renewal (or the admin touched it): take the new expiration.
                    self._lease = dataclasses.replace(self._lease, attrs=self._attrs,
                                                      expiration=ev.lease.expiration,
                                                      revision=ev.lease.revision)
                    self._removed = False
                    self._retry_at = None       # a PUT that timed out client-side may have landed
                else:
                    # Another host's lease, or other attrs: from our own key (then another host
                    # took it) or from another spelling of it; reading our key tells which.
                    self.log.warning("Subnet %s was written with PublicIP %s (%s), not our lease; "
                                     "checking our key", subnet, ev.lease.public_ip, ev.lease.attrs)
                    self._verify = True
            elif ev.kind == LeaseEvent.REMOVED:
                self.log.warning("Lease for subnet %s has been revoked or expired; re-creating it", subnet)
                self._removed = True
                self._retry_at = None
        self._wake.set()

    @staticmethod
    def _lost_error(subnet: Slot, holder) -> LeaseLost:
        return LeaseLost(f"subnet {subnet} is now held by {holder}; refusing to overwrite it")

    # -- the renewal loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Block until `stop` is set; raise LeaseLost when our subnet went to another host."""
        self._stop = stop
        while not stop.is_set():
            with self._lock:
                if self._lost is not None:
                    raise self._lost
                lease, removed, verify = self._lease, self._removed, self._verify
                delay = self._delay(lease)
                if delay <= 0:
                    self._verify = False
                self._wake.clear()
            if delay > 0:
                self._wait(delay)
                continue                    # re-plan: the clock moved, or an event came
            self._step(lease, removed, verify)
        with self._lock:
            if self._lost is not None:
                raise self._lost

    def _delay(self, lease: Lease) -> float:
        """Seconds until the next registry call is due (under the lock)."""
        if self._retry_at is not None:
            return max(0.0, self._retry_at - self.clock())
        if self._removed:
            return 0.0
        if self._verify:
            return max(0.0, self._next_verify - self.clock())
        return self.manager.renew_delay(lease)

    def _step(self, lease: Lease, removed: bool, verify: bool) -> None:
        try:
            new = self._recreate(lease) if removed else self._renew(lease, verify)
        except LeaseLost as e:
            with self._lock:
                self._lost = e
            return
        except Exception as e:      # registry down, timeouts: keep the subnet, try again later
            self.log.warning("Error renewing lease (trying again in 1 min): %s", e)
            with self._lock:
                self._retry_at = self.clock() + RENEW_RETRY_S
                self._verify = self._verify or verify
            return
        with self._lock:
            self._lease = dataclasses.replace(new, attrs=self._attrs)
            if removed:
                self._removed = False
            if verify or removed:
                self._next_verify = self.clock() + REANNOUNCE_MIN_S
            self._retry_at = None
        self.log.info("Renewed lease %s (expires %s)", new.slot,
                      "never" if new.expiration is None else time.strftime(
                          "%Y-%m-%d %H:%M:%S", time.gmtime(new.expiration)))

    def _renew(self, lease: Lease, verify: bool = False) -> Lease:
        # flannel renews with an unconditional PUT; look first, so a subnet that another host
        # took over while we could not reach etcd is not overwritten (the window left is one
        # GET-to-PUT round trip instead of a whole day).
        reg = self.manager.registry
        current = reg.get_lease(lease.subnet, lease.ipv6_subnet)
        if current is None:
            return self._recreate(lease)
        if not self.manager.holds(current):
            raise self._lost_error(lease.slot, current.public_address)
        if verify or current.attrs != self._attrs:
            return self._put_back(current)
        return self.manager.renew(dataclasses.replace(lease, attrs=self._attrs))

    def _put_back(self, current: Lease) -> Lease:
        """Our key holds our PublicIP: put our attrs there again (a reservation stays one), so
        peers that followed an event for another spelling of our key see our lease again."""
        self.log.info("Announcing our lease %s again", current.slot)
        ttl = 0 if current.expiration is None else SUBNET_TTL_S
        return self.manager.registry.update_lease(current.subnet, self._attrs, ttl, current.ipv6_subnet)

    def _recreate(self, lease: Lease) -> Lease:
        """Our key is gone: take it back with create-if-absent, never overwriting another host.
        A deleted reservation comes back as an ordinary 24 h lease."""
        reg = self.manager.registry
        for _ in range(RECREATE_RETRIES):
            try:
                new = reg.create_lease(lease.subnet, self._attrs, SUBNET_TTL_S, lease.ipv6_subnet)
                earlier = self.manager.earlier_holder(new)
                if earlier is not None:             # our key expired and another host took a half
                    reg.delete_lease(new.subnet, new.ipv6_subnet)
                    raise self._lost_error(lease.slot, f"{earlier.public_address} (key {earlier.key})")
                self.log.info("Re-created lease %s", lease.slot)
                return new
            except SubnetExists:
                current = reg.get_lease(lease.subnet, lease.ipv6_subnet)
            if current is None:
                continue                            # deleted again in between: try once more
            if not self.manager.holds(current):
                raise self._lost_error(lease.slot, current.public_address)
            # Our key is there: the DELETE was of another spelling of it, or we put it back
            # earlier. Peers dropped us on that DELETE; one PUT brings them back.
            return self._put_back(current)
        raise RegistryError(f"subnet {lease.slot} keeps appearing and disappearing in etcd")

    def _default_wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        stop = self._stop
        while not (stop is not None and stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.wait(min(left, self.POLL_S)):
                return
