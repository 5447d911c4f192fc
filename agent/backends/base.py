"""The backend contract (flannel's pkg/backend/common.go in a few lines).

Life of a backend inside the daemon:
    be = BACKENDS[cfg.backend_type](ext_iface, cfg.backend)   # ext_iface: agent.iface.ExternalInterface
    attrs = be.lease_attrs()            # what goes into our lease (BackendType/BackendData)
    lease = subnet_manager.acquire(attrs)
    be.setup(lease, cfg)                # devices, addresses, routes for our own subnet
    be.sync_peers(leases)               # the full set of other hosts' live leases (start-up, re-list)
    be.add_peer(lease) / be.remove_peer(lease)   # watch events, own subnet never included
    be.check()                          # periodic (10 s): repair kernel state someone removed
    be.close()                          # stop forwarding; flannel leaves kernel state in place
"""
from __future__ import annotations

from typing import Iterable, Protocol

from ..errors import BackendError
from ..lease import Lease, LeaseAttrs


class Backend(Protocol):
    name: str

    def mtu(self) -> int:
        """FLANNEL_MTU for subnet.env (FLANNEL.md §3.8)."""

    def lease_attrs(self) -> LeaseAttrs: ...

    def setup(self, lease: Lease, network) -> None: ...

    def sync_peers(self, leases: Iterable[Lease]) -> None: ...

    def add_peer(self, lease: Lease) -> None: ...

    def remove_peer(self, lease: Lease) -> None: ...

    def check(self) -> None: ...

    def close(self) -> None: ...
