"""An in-memory stand-in for agent.registry's lease calls, with etcd's semantics where they matter.

Same signatures as the real registry (list_leases, get_lease, create_lease, update_lease,
delete_lease), plus helpers for tests: `put` to seed leases, `fail` to inject errors,
`calls` to see what the code under test did, and an injectable clock for TTL expiry.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from fastflannel.agent.errors import SubnetExists
from fastflannel.agent.lease import Lease, LeaseAttrs, subnet_key


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


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
    def __init__(self, clock: Callable[[], float] = None):
        self.clock = clock or FakeClock()
        self._kv: Dict[ipaddress.IPv4Network, _Entry] = {}
        self.revision = 1
        self.calls: List[Tuple[str, object]] = []
        # method name -> list of exceptions raised (one per call, in order) before the real work
        self._failures: Dict[str, List[BaseException]] = {}
        # called with (method, subnet) before each operation; may mutate the registry (races)
        self.before: Optional[Callable[[str, object], None]] = None

    # -- helpers for tests ------------------------------------------------------------------------
    def put(self, subnet, public_ip: str, ttl_s: Optional[int] = 86400, btype=None, data=None) -> Lease:
        """Seed a lease; ttl_s None or 0 makes a reservation (no expiry)."""
        subnet = net(subnet) if isinstance(subnet, str) else subnet
        self._store(subnet, attrs(public_ip, btype, data), ttl_s or 0)
        return self._lease(subnet)

    def fail(self, method: str, *excs: BaseException) -> None:
        """Make the next len(excs) calls of `method` raise these exceptions, in order."""
        self._failures.setdefault(method, []).extend(excs)

    def holder(self, subnet) -> Optional[str]:
        subnet = net(subnet) if isinstance(subnet, str) else subnet
        self._expire()
        e = self._kv.get(subnet)
        return str(e.attrs.public_ip) if e else None

    def subnets(self) -> List[ipaddress.IPv4Network]:
        self._expire()
        return sorted(self._kv, key=subnet_key)

    def names(self) -> List[str]:
        return [c[0] for c in self.calls]

    # -- the registry protocol --------------------------------------------------------------------
    def list_leases(self) -> Tuple[List[Lease], int]:
        self._enter("list_leases", None)
        return [self._lease(s) for s in self.subnets()], self.revision

    def get_lease(self, subnet) -> Optional[Lease]:
        self._enter("get_lease", subnet)
        self._expire()
        return self._lease(subnet) if subnet in self._kv else None

    def create_lease(self, subnet, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        self._enter("create_lease", subnet)
        self._expire()
        if subnet in self._kv:
            raise SubnetExists(f"subnet already exists: {subnet}")
        self._store(subnet, attrs, ttl_s)
        return self._lease(subnet)

    def update_lease(self, subnet, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        self._enter("update_lease", (subnet, ttl_s))
        self._store(subnet, attrs, ttl_s)
        return self._lease(subnet)

    def delete_lease(self, subnet) -> None:
        self._enter("delete_lease", subnet)
        if self._kv.pop(subnet, None) is not None:
            self.revision += 1

    # -- internals --------------------------------------------------------------------------------
    def _enter(self, method: str, arg) -> None:
        self.calls.append((method, arg))
        if self.before is not None:
            self.before(method, arg)
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    def _store(self, subnet, attrs: LeaseAttrs, ttl_s: int) -> None:
        self.revision += 1
        exp = self.clock() + ttl_s if ttl_s else None
        self._kv[subnet] = _Entry(attrs, exp, self.revision)

    def _expire(self) -> None:
        now = self.clock()
        for s in [s for s, e in self._kv.items() if e.expiration is not None and e.expiration <= now]:
            del self._kv[s]
            self.revision += 1

    def _lease(self, subnet) -> Lease:
        e = self._kv[subnet]
        return Lease(subnet, e.attrs, e.expiration, e.mod_revision)
