"""An in-memory Registry (agent.registry_api) with etcd's semantics where they matter, for the
lease-policy unit tests. mypy checks that it satisfies the Protocol (see the end of this file);
tests/test_registry_contract.py runs the same sequence against it and a real etcd.

Beyond the Protocol, helpers for tests: `put` to seed leases, `fail` to inject errors, `calls` to
see what the code under test did, `before` to race it, and an injectable clock for TTL expiry.
"""
from __future__ import annotations

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
        self._kv: Dict[IPv4Network, _Entry] = {}
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
            btype: Optional[str] = None, data: Optional[dict] = None) -> Lease:
        """Seed a lease; ttl_s None or 0 makes a reservation (no expiry)."""
        sn = net(subnet) if isinstance(subnet, str) else subnet
        self._store(sn, attrs(public_ip, btype, data), ttl_s or 0)
        return self._lease(sn)

    def fail(self, method: str, *excs: BaseException) -> None:
        """Make the next len(excs) calls of `method` raise these exceptions, in order."""
        self._failures.setdefault(method, []).extend(excs)

    def holder(self, subnet: Union[str, IPv4Network]) -> Optional[str]:
        sn = net(subnet) if isinstance(subnet, str) else subnet
        self._expire()
        e = self._kv.get(sn)
        return str(e.attrs.public_ip) if e else None

    def subnets(self) -> List[IPv4Network]:
        self._expire()
        return sorted(self._kv, key=subnet_key)

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
        return [self._lease(s) for s in self.subnets()], self.revision

    def get_lease(self, subnet: IPv4Network) -> Optional[Lease]:
        self._enter("get_lease", subnet)
        self._expire()
        return self._lease(subnet) if subnet in self._kv else None

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        self._enter("create_lease", subnet)
        self._expire()
        if subnet in self._kv:
            raise SubnetExists(f"subnet already exists: {subnet}")
        self._store(subnet, attrs, ttl_s)
        return self._lease(subnet)

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        self._enter("update_lease", (subnet, ttl_s))
        self._store(subnet, attrs, ttl_s)
        return self._lease(subnet)

    def delete_lease(self, subnet: IPv4Network) -> None:
        self._enter("delete_lease", subnet)
        if self._kv.pop(subnet, None) is not None:
            self._changed_to(LeaseEvent(LeaseEvent.REMOVED, Lease(subnet, None)))

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

    def _store(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> None:
        exp = self.clock() + ttl_s if ttl_s else None
        self._kv[subnet] = _Entry(attrs, exp, self.revision + 1)
        self._changed_to(LeaseEvent(LeaseEvent.ADDED, self._lease(subnet)))

    def _expire(self) -> None:
        now = self.clock()
        for s in [s for s, e in self._kv.items() if e.expiration is not None and e.expiration <= now]:
            del self._kv[s]
            self._changed_to(LeaseEvent(LeaseEvent.REMOVED, Lease(s, None)))

    def _lease(self, subnet: IPv4Network) -> Lease:
        e = self._kv[subnet]
        return Lease(subnet, e.attrs, e.expiration, e.mod_revision)


if TYPE_CHECKING:
    def _satisfies_the_protocol(fake: FakeRegistry) -> Registry:
        return fake                          # mypy: FakeRegistry is a Registry
