"""The registry contract: what the lease policy and the daemon need from the store of leases.

`LeaseStore` is the part the lease policy (`subnets.SubnetManager`, `LeaseKeeper`) calls;
`Registry` adds connecting, the network config and the lease watch, which the daemon calls
(flannel's `pkg/subnet` Registry interface). The etcd v3 registry (`registry.EtcdRegistry`), the
etcd v2 one (`registry_v2.EtcdV2Registry`), the daemon's choice of the two
(`store_select.StoreSelector`) and the test fake (`tests/support/fakeregistry.py`) satisfy
`Registry`; mypy checks them all.
See docs/architecture.md §"The registry contract" and docs/flannel-compat.md §"Keys".
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

from .lease import IPv4Network, Lease, LeaseAttrs, LeaseEvent


@dataclass
class WatchBatch:
    snapshot: Optional[list[Lease]]   # the full current set after a (re-)list, else None
    events: list[LeaseEvent]          # incremental events (REMOVED events carry attrs=None)
    revision: int


class LeaseStore(Protocol):
    """Leases under `<prefix>/subnets/`; `ttl_s == 0` means no TTL (a reservation)."""

    def list_leases(self) -> tuple[list[Lease], int]:
        """Every lease, in key order, and the store revision of that read."""
        ...

    def get_lease(self, subnet: IPv4Network) -> Optional[Lease]: ...

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        """Create only if absent; raises errors.SubnetExists when another host was first."""
        ...

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        """Write unconditionally (a renewal) with a fresh TTL."""
        ...

    def delete_lease(self, subnet: IPv4Network) -> None: ...


class Registry(LeaseStore, Protocol):
    """A LeaseStore the daemon can connect to, read the network config from and watch."""

    def connect(self) -> None:
        """Raises errors.EtcdUnreachable (the daemon retries) or another errors.RegistryError."""
        ...

    def close(self) -> None: ...

    def get_network_config(self) -> Optional[str]:
        """The raw JSON at `<prefix>/config`, None when absent."""
        ...

    def config_from_v2_store(self) -> Optional[str]:
        """The config as an old etcd v2 key, for a hint; best effort, never raises."""
        ...

    def watch_leases(self, revision: int, stop: threading.Event) -> Iterator[WatchBatch]:
        """Lease changes after `revision` until `stop` is set; a batch with a snapshot replaces
        everything known (after a re-list)."""
        ...
