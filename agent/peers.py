"""The cache of other hosts' leases (flannel's LeaseWatcher, docs/flannel-compat.md §"Watch") and
lease admission: which of them the backends may program (docs/architecture.md §"Lease admission").

Backends need the *last known* attrs of a peer when it goes away (its PublicIP, its VTEP MAC),
but an etcd DELETE event carries only the key. The tracker keeps every peer lease it sees and
hands the backends only the admitted ones, as events:

* ADDED when a lease is admitted or its admitted value changes; REMOVED, with the value the
  backends were given, when it goes or stops being admitted;
* events for our own subnet are dropped (the LeaseKeeper handles those);
* `reset()` diffs a full listing against the cache. Unlike flannel, whose first snapshot only
  produces adds, the daemon gets REMOVED events for peers that vanished between two listings
  (after a compaction re-list) and uses `leases()` with the backends' `sync_peers()` to prune
  state left by peers that vanished while it was down.

Admission: a lease is refused when it does not fit the network (outside Network, another prefix
length than SubnetLen; with EnableIPv6 its IPv6 subnet, when it has one, outside IPv6Network or
not an IPv6SubnetLen; a PublicIPv6 no host can have, or none beside an IPv6 subnet; a vxlan
lease with an IPv6 subnet but no usable VtepMAC in BackendV6Data), names an address no host can
have as its PublicIP, carries this host's PublicIP, or is a vxlan lease without a usable
VtepMAC; and, between leases, when its VtepMAC is also announced by another host (one FDB entry
per MAC: the host admitted first keeps it) or by this host (the daemon then takes a new MAC,
`take_mac_conflicts()`); and when its IPv6 subnet is this host's or also leased by a key
created earlier. Two keys of one subnet (`10.5.1.0-24&fc00:5:0:1::-64` and
`10.5.1.0-24&fc00:5:0:2::-64`: a `v4&v6` key is unique only as a pair, docs/flannel-compat.md
§"Dual-stack") are one peer, the earlier-created key's; the other is never programmed, and its
DELETE leaves the first in place. A refused lease is logged once, never replaces the admitted value of
its key (the last good value stays programmed until a DELETE), and is admitted as soon as what
made it refused goes away. `rejected()` and `rejection_counts()` are what monitoring reads.
"""
from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar

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
    json_key,
    slot_key,
    slot_order,
    vtep_mac,
    vtep_mac6,
)

if TYPE_CHECKING:
    from .config import NetworkConfig

log = logging.getLogger("fastflannel.peers")

# Rejection codes (the keys of rejection_counts()).
OUTSIDE_NETWORK = "outside-network"     # not inside Network, or covering it
PREFIX_LENGTH = "prefix-length"         # inside Network, but not a /SubnetLen
PUBLIC_IP = "public-ip"                 # a PublicIP no host can have
OWN_PUBLIC_IP = "own-public-ip"         # our PublicIP on another subnet: a copy of our lease
VTEP_MAC = "vtep-mac"                   # a vxlan lease without a usable VtepMAC
MAC_CONFLICT = "mac-conflict"           # its VtepMAC is another host's, admitted first
OWN_MAC = "own-mac"                     # its VtepMAC is ours
SUBNET_CONFLICT = "subnet-conflict"     # its IPv6 subnet is ours, or another key's, created first
CODES = (OUTSIDE_NETWORK, PREFIX_LENGTH, PUBLIC_IP, OWN_PUBLIC_IP, VTEP_MAC, MAC_CONFLICT, OWN_MAC,
         SUBNET_CONFLICT)

# Addresses that are never a host's unicast address (RFC 1122 §3.2.1.3, RFC 5771, RFC 1112 §4).
_NOT_A_HOST = ((IPv4Network("0.0.0.0/8"), "is not a host address (0.0.0.0/8)"),
               (IPv4Network("127.0.0.0/8"), "is a loopback address"),
               (IPv4Network("224.0.0.0/4"), "is a multicast address"),
               (IPv4Network("240.0.0.0/4"), "is reserved (240.0.0.0/4, with the broadcast address)"))


# The IPv6 addresses that are never a host's unicast address (RFC 4291 §2.5.2, §2.5.3, §2.7).
_NOT_A_HOST6 = ((IPv6Network("::/128"), "is the unspecified address"),
                (IPv6Network("::1/128"), "is the loopback address"),
                (IPv6Network("::ffff:0:0/96"), "is an IPv4-mapped address"),
                (IPv6Network("ff00::/8"), "is a multicast address"))


@dataclass(frozen=True)
class Rejection:
    code: str           # one of CODES
    text: str           # for the operator, e.g. "outside the network 10.0.0.0/8"


Net = TypeVar("Net", IPv4Network, IPv6Network)
Addr = TypeVar("Addr", IPv4Address, IPv6Address)


def network_problem(subnet: Net, network: Net, name: str = "network") -> Optional[str]:
    """Why `subnet` cannot be a host's subnet in `network` (None: it can, size aside). The
    backends use it too, so no lease outside Network is programmed whoever calls them. `name`
    is what the message calls the network ("IPv6Network" for the IPv6 half)."""
    if subnet.prefixlen > network.prefixlen and subnet.subnet_of(network):
        return None
    if subnet == network:
        return f"is the whole {name} {network}"
    if network.subnet_of(subnet):
        return f"covers the whole {name} {network}"
    return f"is outside the {name} {network}"


def _address_problem(ip: Addr, network: Optional[Net], not_a_host: Sequence[Tuple[Any, str]]) -> Optional[str]:
    for net, why in not_a_host:
        if ip in net:
            return why
    if network is not None and ip in network:
        return f"is inside the overlay network {network} (the tunnel would carry itself)"
    return None


def public_ip_problem(ip: IPv4Address, network: Optional[IPv4Network]) -> Optional[str]:
    return _address_problem(ip, network, _NOT_A_HOST)


def network6_problem(subnet6: IPv6Network, network6: IPv6Network) -> Optional[str]:
    """network_problem for the IPv6 half of a lease."""
    why = network_problem(subnet6, network6, "IPv6Network")
    return None if why is None else f"IPv6 subnet {subnet6} {why}"


def public_ipv6_problem(ip: IPv6Address, network6: Optional[IPv6Network]) -> Optional[str]:
    return _address_problem(ip, network6, _NOT_A_HOST6)


def ipv6_rejection(lease: Lease, cfg: Optional[NetworkConfig]) -> Optional[Rejection]:
    """The rules for the IPv6 half of a lease, which matter only when we run IPv6: a v4-only host
    programs the IPv4 half alone, as flannel's (a mixed cluster, docs/flannel-compat.md
    §"Dual-stack"). A lease without an IPv6 subnet passes (an IPv4-only peer)."""
    sn6, a = lease.ipv6_subnet, lease.attrs
    if cfg is None or not cfg.enable_ipv6 or sn6 is None or a is None or cfg.ipv6_network is None:
        return None
    why = network6_problem(sn6, cfg.ipv6_network)
    if why is not None:
        return Rejection(OUTSIDE_NETWORK, why)
    if sn6.prefixlen != cfg.ipv6_subnet_len:
        return Rejection(PREFIX_LENGTH, f"IPv6 prefix length /{sn6.prefixlen} is not the network's "
                                        f"IPv6SubnetLen /{cfg.ipv6_subnet_len}")
    if a.public_ipv6 is None:
        return Rejection(PUBLIC_IP, f"IPv6 subnet {sn6} without a PublicIPv6")
    why = public_ipv6_problem(a.public_ipv6, cfg.ipv6_network)
    if why is not None:
        return Rejection(PUBLIC_IP, f"PublicIPv6 {a.public_ipv6} {why}")
    if a.backend_type == "vxlan" and vtep_mac6(a) is None:
        raw = json_key(a.backend_v6_data, "VtepMAC") if isinstance(a.backend_v6_data, dict) else None
        return Rejection(VTEP_MAC, f"vxlan lease with an IPv6 subnet but no usable VtepMAC in "
                                   f"BackendV6Data ({raw!r})")
    return None


class PeerTracker:
    def __init__(self, own_subnet: Slot, own_attrs: Optional[LeaseAttrs] = None,
                 config: Optional[NetworkConfig] = None, own_ipv6_subnet: Optional[IPv6Network] = None):
        """`own_attrs`, `config` and `own_ipv6_subnet` enable the rules that need them (our
        PublicIP, MAC and IPv6 subnet, the network); without them only the rules of a lease
        alone apply."""
        self.own_subnet = own_subnet
        self._own = own_attrs
        self._config = config
        self._own6 = own_ipv6_subnet
        self._seen: Dict[Slot, Lease] = {}        # per subnet, the earliest-created key's value
        # subnets with several live keys (key -> latest value); rare, so kept apart from _seen
        self._shared: Dict[Slot, Dict[str, Lease]] = {}
        self._cand: Dict[Slot, Lease] = {}        # the value that may be admitted per key
        self._by_mac: Dict[str, Set[Slot]] = {}   # VtepMAC -> keys whose candidate has it
        self._by_v6: Dict[IPv6Network, Set[Slot]] = {}  # IPv6 subnet -> keys whose candidate has it
        self._admitted: Dict[Slot, Lease] = {}    # what the backends were given
        self._order: Dict[Slot, int] = {}         # when each key was admitted
        self._seq = itertools.count()
        self._rejected: Dict[Slot, Rejection] = {}
        self._counts: Dict[str, int] = dict.fromkeys(CODES, 0)
        self._conflicts: Dict[Slot, Lease] = {}
        self._lock = threading.Lock()

    # -- reading --------------------------------------------------------------------------------
    def leases(self) -> List[Lease]:
        """The admitted peer leases (never our own), in the order they were admitted."""
        with self._lock:
            # _admitted is in admission order already: a new key is inserted last (with the next
            # _order number), an update keeps its place, a removal leaves both (no sort: /metrics
            # asks for this on every scrape).
            return list(self._admitted.values())

    def rejected(self) -> Dict[str, str]:
        """Lease key -> why its current value is refused, for every key refused now."""
        with self._lock:
            return {self._key_of(s): r.text for s, r in self._rejected.items()}

    def _key_of(self, subnet: Slot) -> str:
        """The key of the latest value seen for `subnet` (dual-stack keys name the IPv6 half)."""
        seen = self._seen.get(subnet)
        return seen.key if seen is not None else slot_key(subnet)

    def rejection_counts(self) -> Dict[str, int]:
        """Rejection code -> how many times a lease value was refused (each logged once)."""
        with self._lock:
            return dict(self._counts)

    def take_mac_conflicts(self) -> List[Lease]:
        """Peer leases that announce our own VTEP MAC, each returned once."""
        with self._lock:
            out, self._conflicts = list(self._conflicts.values()), {}
            return out

    # -- changes --------------------------------------------------------------------------------
    def reset(self, leases: Iterable[Lease]) -> List[LeaseEvent]:
        """Replace the cache with a full listing; return the differences as events.

        REMOVED events come first, so a backend never deletes a route it has just installed
        when a subnet was replaced by one of another size. A renewal alone (a new expiration)
        is no event."""
        fresh: Dict[Slot, Lease] = {}
        shared: Dict[Slot, Dict[str, Lease]] = {}
        for lease in leases:
            if lease.slot == self.own_subnet:
                continue
            if lease.attrs is None:
                log.warning("Ignoring lease %s without attributes in a listing", lease.slot)
                continue
            prev = fresh.get(lease.slot)
            if prev is not None and not _same_key(prev, lease):
                keys = shared.setdefault(lease.slot, {prev.key: prev})
                keys[lease.key] = lease
                lease = _first(lease.slot, keys)
            fresh[lease.slot] = lease
        with self._lock:
            affected = set(self._seen) | set(fresh) | set(self._admitted)
            self._seen, self._shared = fresh, shared
            self._rebuild_candidates()
            return self._commit(affected, attrs_only=True)

    def apply(self, events: Iterable[LeaseEvent]) -> List[LeaseEvent]:
        """Update the cache from watch events; return the events backends should see."""
        out: List[LeaseEvent] = []
        with self._lock:
            for ev in events:
                subnet = ev.lease.slot
                if subnet == self.own_subnet:
                    continue
                if ev.kind == LeaseEvent.ADDED:
                    if ev.lease.attrs is None:
                        log.warning("Ignoring added subnet %s without attributes", subnet)
                        continue
                    self._put(subnet, ev.lease)
                elif ev.kind == LeaseEvent.REMOVED:
                    if not self._drop(subnet, ev.lease):
                        log.info("Removed subnet (%s) was not found", subnet)
                        continue
                else:
                    log.warning("Ignoring lease event of unknown kind %r for %s", ev.kind, subnet)
                    continue
                out.extend(self._commit(self._update_candidate(subnet), attrs_only=False))
        return out

    def set_own_attrs(self, attrs: LeaseAttrs) -> List[LeaseEvent]:
        """Our lease now carries `attrs` (a new VTEP MAC); re-admit every peer against it."""
        with self._lock:
            self._own = attrs
            self._rebuild_candidates()
            return self._commit(set(self._seen) | set(self._admitted), attrs_only=True)

    def _put(self, subnet: Slot, lease: Lease) -> None:
        """A key's new value; of several keys of one subnet the earliest-created is the peer."""
        seen = self._seen.get(subnet)
        keys = self._shared.get(subnet)
        if keys is None and (seen is None or _same_key(seen, lease)):
            self._seen[subnet] = lease
            return
        if keys is None:
            assert seen is not None
            keys = self._shared[subnet] = {seen.key: seen}
        keys[lease.key] = lease
        self._seen[subnet] = _first(subnet, keys)

    def _drop(self, subnet: Slot, gone: Lease) -> bool:
        """A key is gone (False: it was not known); another key of the subnet may take over."""
        keys = self._shared.get(subnet)
        if keys is None:
            seen = self._seen.get(subnet)
            if seen is None or not _same_key(seen, gone):
                return False
            del self._seen[subnet]
            return True
        if keys.pop(gone.key, None) is None:
            return False
        if len(keys) == 1:
            del self._shared[subnet]
        self._seen[subnet] = _first(subnet, keys)
        return True

    # -- admission ------------------------------------------------------------------------------
    def _static(self, lease: Lease) -> Optional[Rejection]:
        """The rules a lease must pass on its own."""
        a = lease.attrs
        assert a is not None
        cfg = self._config
        if cfg is not None and cfg.ipv6_only:
            return self._static6_only(lease, cfg)
        if cfg is not None:
            why = network_problem(lease.subnet, cfg.network)
            if why is not None:
                return Rejection(OUTSIDE_NETWORK, why)
            if lease.subnet.prefixlen != cfg.subnet_len:
                return Rejection(PREFIX_LENGTH, f"prefix length /{lease.subnet.prefixlen} is not the network's "
                                                f"SubnetLen /{cfg.subnet_len}")
        why = public_ip_problem(a.public_ip, cfg.network if cfg is not None else None)
        if why is not None:
            return Rejection(PUBLIC_IP, f"PublicIP {a.public_ip} {why}")
        if self._own is not None and a.public_ip == self._own.public_ip:
            return Rejection(OWN_PUBLIC_IP, f"PublicIP {a.public_ip} is this host's, on another subnet "
                                            f"than its lease {self.own_subnet}")
        if a.backend_type == "vxlan" and vtep_mac(a) is None:
            raw = json_key(a.backend_data, "VtepMAC") if isinstance(a.backend_data, dict) else None
            return Rejection(VTEP_MAC, f"vxlan lease without a usable VtepMAC ({raw!r})")
        return ipv6_rejection(lease, cfg)

    def _static6_only(self, lease: Lease, cfg: NetworkConfig) -> Optional[Rejection]:
        """An IPv6-only network: the IPv4 half must be the placeholder 0.0.0.0/0 (flannel's zero
        IP4Net), an IPv6 half is required, PublicIP (0.0.0.0 there) is not looked at, and a
        host is told by its PublicIPv6 (docs/flannel-compat.md §"IPv6-only")."""
        if lease.subnet != NO_SUBNET:
            return Rejection(OUTSIDE_NETWORK, f"IPv4 subnet {lease.subnet} in an IPv6-only network "
                                              f"(EnableIPv4 false: only the placeholder {NO_SUBNET})")
        if lease.ipv6_subnet is None:
            return Rejection(OUTSIDE_NETWORK, "no IPv6 subnet in an IPv6-only network")
        pub6 = lease.public_ipv6
        if self._own is not None and pub6 is not None and pub6 == self._own.public_ipv6:
            return Rejection(OWN_PUBLIC_IP, f"PublicIPv6 {pub6} is this host's, on another subnet "
                                            f"than its lease {self.own_subnet}")
        return ipv6_rejection(lease, cfg)

    def _candidate(self, subnet: Slot) -> Optional[Lease]:
        """The value of `subnet` that may be admitted: the latest one if it passes, else the
        value admitted before (a refused value never replaces a good one), else none."""
        seen = self._seen.get(subnet)
        if seen is None:
            return None
        if self._static(seen) is None:
            return seen
        old = self._admitted.get(subnet)
        return old if old is not None and self._static(old) is None else None

    def _mac(self, lease: Optional[LeaseAttrs | Lease]) -> Optional[str]:
        """The VTEP MAC whose FDB entry the lease needs: BackendData's, or in an IPv6-only
        network BackendV6Data's (there is no IPv4 device)."""
        a = lease.attrs if isinstance(lease, Lease) else lease
        if a is None or a.backend_type != "vxlan":
            return None
        if self._config is not None and self._config.ipv6_only:
            return vtep_mac6(a)
        return vtep_mac(a)

    def _v6(self, lease: Lease) -> Optional[IPv6Network]:
        """The IPv6 subnet the lease needs routed here: only dual-stack (an IPv4-only host
        programs no IPv6 half; IPv6-only keys are their IPv6 subnet, so one per subnet already)."""
        cfg = self._config
        if cfg is None or not cfg.enable_ipv6 or cfg.ipv6_only:
            return None
        return lease.ipv6_subnet

    def _index(self, subnet: Slot, lease: Optional[Lease]) -> Set[Slot]:
        """Set the candidate of `subnet`; return the keys that share its old or new MAC or IPv6
        subnet."""
        touched = {subnet}
        old = self._cand.pop(subnet, None)
        for adding, cand in ((False, old), (True, lease)):
            if cand is None:
                continue
            touched |= _regroup(self._by_mac, self._mac(cand), subnet, adding)
            touched |= _regroup(self._by_v6, self._v6(cand), subnet, adding)
        if lease is not None:
            self._cand[subnet] = lease
        return touched

    def _update_candidate(self, subnet: Slot) -> Set[Slot]:
        return self._index(subnet, self._candidate(subnet))

    def _rebuild_candidates(self) -> None:
        self._cand, self._by_mac, self._by_v6 = {}, {}, {}
        for subnet in self._seen:
            self._index(subnet, self._candidate(subnet))

    def _relational(self, subnet: Slot, cand: Lease) -> Optional[Rejection]:
        """The rules between leases: one IPv6 subnet, one VTEP MAC, one host."""
        sn6 = self._v6(cand)
        if sn6 is not None and sn6 == self._own6:
            return Rejection(SUBNET_CONFLICT, f"IPv6 subnet {sn6} is this host's")
        group6 = self._by_v6.get(sn6, set()) if sn6 is not None else set()
        if len(group6) > 1:
            first = min(group6, key=lambda s: (self._cand[s].created, self._cand[s].key))
            if first != subnet:
                holder = self._cand[first]
                return Rejection(SUBNET_CONFLICT, f"IPv6 subnet {sn6} is also leased by {holder.key} "
                                                  f"({holder.public_address}), created first")
        mac = self._mac(cand)
        if mac is None:
            return None
        own = self._own
        if own is not None and self._mac(own) == mac:
            return Rejection(OWN_MAC, f"VtepMAC {mac} is this host's own VTEP MAC")
        group = self._by_mac.get(mac, set())
        ips = {self._cand[s].public_address for s in group}
        if len(ips) <= 1:
            return None
        owner = self._mac_owner(group)
        if cand.public_address == self._cand[owner].public_address:
            return None
        return Rejection(MAC_CONFLICT, f"VtepMAC {mac} is also announced by {slot_key(owner)} "
                                       f"({self._cand[owner].public_address}), admitted first")

    def _mac_owner(self, group: Set[Slot]) -> Slot:
        """The key whose host keeps a shared MAC: the one admitted first with it, else the oldest
        write."""
        mac = self._mac(self._cand[next(iter(group))])
        admitted = [s for s in group if s in self._admitted and self._mac(self._admitted[s]) == mac]
        if admitted:
            return min(admitted, key=lambda s: self._order[s])
        return min(group, key=lambda s: (self._cand[s].revision, slot_key(s)))

    def _decide(self, subnet: Slot) -> Tuple[Optional[Lease], Optional[Rejection]]:
        """(the value to admit or None, why the latest value of the key is refused or None)."""
        seen = self._seen.get(subnet)
        if seen is None:
            return None, None
        static = self._static(seen)
        cand = self._cand.get(subnet)
        if cand is None:
            return None, static
        rel = self._relational(subnet, cand)
        if rel is not None:
            return None, static or rel
        return cand, static

    def _commit(self, affected: Set[Slot], attrs_only: bool) -> List[LeaseEvent]:
        """Decide every affected key; return REMOVED events first, then ADDED."""
        removed: List[LeaseEvent] = []
        added: List[LeaseEvent] = []
        for subnet in sorted(affected, key=slot_order):
            admit, why = self._decide(subnet)
            self._note(subnet, admit, why)
            old = self._admitted.get(subnet)
            if admit is None:
                if old is not None:
                    del self._admitted[subnet]
                    del self._order[subnet]
                    removed.append(LeaseEvent(LeaseEvent.REMOVED, old))
                continue
            self._admitted[subnet] = admit
            if old is None:
                self._order[subnet] = next(self._seq)
            elif old.key != admit.key:          # another key of the subnet (its IPv6 half differs)
                removed.append(LeaseEvent(LeaseEvent.REMOVED, old))
            changed = old is None or old.key != admit.key or (
                old.attrs != admit.attrs if attrs_only else old != admit)
            if changed:
                added.append(LeaseEvent(LeaseEvent.ADDED, admit))
        return removed + added

    def _note(self, subnet: Slot, admit: Optional[Lease], why: Optional[Rejection]) -> None:
        """Log a refusal once (again only when the reason changes) and count it."""
        if why is None:
            if self._rejected.pop(subnet, None) is not None and admit is not None:
                log.info("Lease %s is admitted now", slot_key(subnet))
            return
        if self._rejected.get(subnet) == why:
            return
        self._rejected[subnet] = why
        self._counts[why.code] += 1
        seen = self._seen[subnet]
        kept = "; keeping its last good value" if admit is not None and admit is not seen else ""
        log.warning("Ignoring lease %s (PublicIP %s): %s%s", seen.key,
                    seen.public_address, why.text, kept)
        if why.code == OWN_MAC:
            self._conflicts[subnet] = seen


K = TypeVar("K")


def _same_key(a: Lease, b: Lease) -> bool:
    """One etcd key (compared by its halves: cheaper than rendering `Lease.key`)."""
    return a.subnet == b.subnet and a.ipv6_subnet == b.ipv6_subnet


def _first(subnet: Slot, keys: Dict[str, Lease]) -> Lease:
    """The value of the subnet's earliest-created key; the others are logged, never used."""
    first = min(keys.values(), key=lambda x: (x.created, x.key))
    if len(keys) > 1:
        others = ", ".join(k for k in sorted(keys) if k != first.key)
        log.warning("Ignoring lease %s: its subnet %s is also leased by %s (PublicIP %s), created first",
                    others, slot_key(subnet), first.key, first.public_address)
    return first


def _regroup(index: Dict[K, Set[Slot]], value: Optional[K], subnet: Slot, adding: bool) -> Set[Slot]:
    """Add `subnet` to (or drop it from) the group of keys sharing `value`; return the group."""
    if value is None:
        return set()
    group = index.setdefault(value, set())
    if adding:
        group.add(subnet)
    else:
        group.discard(subnet)
    if not group:
        del index[value]
    return set(group)


__all__ = ["CODES", "PeerTracker", "Rejection", "ipv6_rejection", "network6_problem", "network_problem",
           "public_ip_problem", "public_ipv6_problem"]
