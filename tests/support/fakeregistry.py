"""An in-memory Registry (agent.registry_api) with etcd's semantics where they matter, for the
lease-policy unit tests. mypy checks that it satisfies the Protocol (see the end of this file);
tests/test_registry_contract.py runs the same sequence against it and a real etcd.

Beyond the Protocol, helpers for tests: `put` to seed leases, `fail` to inject errors, `calls` to
see what the code under test did, `before` to race it, and an injectable clock for TTL expiry.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple, Union

from fastflannel.agent.errors import SubnetExists
from fastflannel.agent.lease import Lease, LeaseAttrs, LeaseEvent, subnet_key
from fastflannel.agent.registry_api import WatchBatch

if TYPE_CHECKING:
    from fastflannel.agent.registry_api import Registry

IPv4Network = ipaddress.IPv4Network
IPv6Network = ipaddress.IPv6Network
Key = Tuple[IPv4Network, Optional[IPv6Network]]      # a lease key's two halves
WATCH_POLL_S = 0.05          # how often a blocked watch looks at its stop event


def net(text: str) -> IPv4Network:
    return IPv4Network(text)


def attrs(ip: str, btype: Optional[str] = None, data: Optional[dict] = None) -> LeaseAttrs:
    return LeaseAttrs(ipaddress.IPv4Address(ip), btype, data)


@dataclass
class _Entry:
    attrs: LeaseAttrs
    expiration: Optional[float]
    mod_revision: int
    create_revision: int


class FakeClock:
    """A settable epoch clock: `clock()` reads, `clock.advance(s)` moves it forward."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRegistry:
    def __init__(self, clock: Optional[Callable[[], float]] = None, config: Optional[str] = None):
        self.clock: Callable[[], float] = clock if clock is not None else FakeClock()
        self.config = config                 # what get_network_config() returns
        self._kv: Dict[Key, _Entry] = {}            # (IPv4 subnet, IPv6 subnet) -> value
        self.revision = 1
        self._log: List[Tuple[int, LeaseEvent]] = []      # (revision, event), for watch_leases
        self._changed = threading.Condition()
        self.calls: List[Tuple[str, object]] = []
        # method name -> list of exceptions raised (one per call, in order) before the real work
        self._failures: Dict[str, List[BaseException]] = {}
        # called with (method, subnet) before each operation; may mutate the registry (races)
        self.before: Optional[Callable[[str, object], None]] = None

    # -- helpers for tests ------------------------------------------------------------------------
    def put(self, subnet: Union[str, IPv4Network], public_ip: str, ttl_s: Optional[int] = 86400,
            btype: Optional[str] = None, data: Optional[dict] = None,
            ipv6_subnet: Optional[Union[str, IPv6Network]] = None, public_ipv6: Optional[str] = None) -> Lease:
        """Seed a lease; ttl_s None or 0 makes a reservation (no expiry)."""
        sn = net(subnet) if isinstance(subnet, str) else subnet
        sn6 = IPv6Network(ipv6_subnet) if isinstance(ipv6_subnet, str) else ipv6_subnet
        a = attrs(public_ip, btype, data)
        if public_ipv6 is not None:
            a = dataclasses.replace(a, public_ipv6=ipaddress.IPv6Address(public_ipv6))
        self._store((sn, sn6), a, ttl_s or 0)
        return self._lease((sn, sn6))

    def fail(self, method: str, *excs: BaseException) -> None:
        """Make the next len(excs) calls of `method` raise these exceptions, in order."""
        self._failures.setdefault(method, []).extend(excs)

    def holder(self, subnet: Union[str, IPv4Network]) -> Optional[str]:
        sn = net(subnet) if isinstance(subnet, str) else subnet
        self._expire()
        e = next((e for k, e in sorted(self._kv.items(), key=lambda ke: subnet_key(*ke[0])) if k[0] == sn), None)
        return str(e.attrs.public_ip) if e else None

    def keys(self) -> List[Key]:
        """Every lease key, in etcd key order."""
        self._expire()
        return sorted(self._kv, key=lambda k: subnet_key(*k))

    def subnets(self) -> List[IPv4Network]:
        """The IPv4 subnet of every lease, in key order."""
        return [k[0] for k in self.keys()]

    def names(self) -> List[str]:
        return [c[0] for c in self.calls]

    # -- the Registry protocol --------------------------------------------------------------------
    def connect(self) -> None:
        self._enter("connect", None)

    def close(self) -> None:
        pass

    def get_network_config(self) -> Optional[str]:
        self._enter("get_network_config", None)
        return self.config

    def config_from_v2_store(self) -> Optional[str]:
        return None

    def list_leases(self) -> Tuple[List[Lease], int]:
        self._enter("list_leases", None)
        return [self._lease(k) for k in self.keys()], self.revision

    def get_lease(self, subnet: IPv4Network, ipv6_subnet: Optional[IPv6Network] = None) -> Optional[Lease]:
        self._enter("get_lease", subnet)
        self._expire()
        return self._lease((subnet, ipv6_subnet)) if (subnet, ipv6_subnet) in self._kv else None

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int,
                     ipv6_subnet: Optional[IPv6Network] = None) -> Lease:
        self._enter("create_lease", subnet)
        self._expire()
        if (subnet, ipv6_subnet) in self._kv:
            raise SubnetExists(f"subnet already exists: {subnet_key(subnet, ipv6_subnet)}")
        self._store((subnet, ipv6_subnet), attrs, ttl_s)
        return self._lease((subnet, ipv6_subnet))

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int,
                     ipv6_subnet: Optional[IPv6Network] = None) -> Lease:
        self._enter("update_lease", (subnet, ttl_s))
        self._store((subnet, ipv6_subnet), attrs, ttl_s)
        return self._lease((subnet, ipv6_subnet))

    def delete_lease(self, subnet: IPv4Network, ipv6_subnet: Optional[IPv6Network] = None) -> None:
        self._enter("delete_lease", subnet)
        if self._kv.pop((subnet, ipv6_subnet), None) is not None:
            self._changed_to(LeaseEvent(LeaseEvent.REMOVED, Lease(subnet, None, ipv6_subnet=ipv6_subnet)))

    def watch_leases(self, revision: int, stop: threading.Event) -> Iterator[WatchBatch]:
        """Every change after `revision` in order, one batch per wake-up, until `stop` is set.
        Expiry is seen when the clock is read (etcd expires on its own; advance the clock)."""
        seen = revision
        while not stop.is_set():
            self._expire()
            with self._changed:
                new = [(rev, ev) for rev, ev in self._log if rev > seen]
                if not new:
                    self._changed.wait(WATCH_POLL_S)
                    continue
            seen = new[-1][0]
            yield WatchBatch(snapshot=None, events=[ev for _, ev in new], revision=seen)

    # -- internals --------------------------------------------------------------------------------
    def _enter(self, method: str, arg: object) -> None:
        self.calls.append((method, arg))
        if self.before is not None:
            self.before(method, arg)
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _changed_to(self, ev: LeaseEvent) -> None:
        with self._changed:
            self.revision += 1
            self._log.append((self.revision, ev))
            self._changed.notify_all()

    def _store(self, key: Key, attrs: LeaseAttrs, ttl_s: int) -> None:
        exp = self.clock() + ttl_s if ttl_s else None
        old = self._kv.get(key)
        rev = self.revision + 1
        self._kv[key] = _Entry(attrs, exp, rev, old.create_revision if old else rev)
        self._changed_to(LeaseEvent(LeaseEvent.ADDED, self._lease(key)))

    def _expire(self) -> None:
        now = self.clock()
        for k in [k for k, e in self._kv.items() if e.expiration is not None and e.expiration <= now]:
            del self._kv[k]
            self._changed_to(LeaseEvent(LeaseEvent.REMOVED, Lease(k[0], None, ipv6_subnet=k[1])))

    def _lease(self, key: Union[Key, IPv4Network]) -> Lease:
        if isinstance(key, IPv4Network):        # tests name an IPv4-only lease by its subnet
            key = (key, None)
        e = self._kv[key]
        return Lease(key[0], e.attrs, e.expiration, e.mod_revision, key[1], e.create_revision)


if TYPE_CHECKING:
    def _satisfies_the_protocol(fake: FakeRegistry) -> Registry:
        return fake                          # mypy: FakeRegistry is a Registry
