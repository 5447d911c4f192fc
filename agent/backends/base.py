"""The backend contract (flannel's pkg/backend/common.go in a few lines).

Life of a backend inside the daemon (`daemon.Daemon._start`):
    be = new_backend(ext, cfg, opts)    # BACKENDS[cfg.backend_type](ext, cfg, opts), see __init__.py
    attrs = be.lease_attrs()            # what goes into our lease (BackendType/BackendData)
    lease = subnet_manager.acquire(attrs)
    be.setup(lease, cfg)                # devices, addresses, routes for our own subnet
    be.sync_peers(leases)               # the full set of other hosts' live leases (start-up, re-list)
    be.add_peer(lease) / be.remove_peer(lease)   # watch events, own subnet never included
    be.check()                          # periodic (10 s): repair kernel state someone removed
    be.stats()                          # live data-plane counters for /stats ({} if none)
    be.close()                          # stop forwarding; flannel leaves kernel state in place

`ext` is the chosen external interface (iface.ExternalInterface), `cfg` the network config
(config.NetworkConfig; the backend reads its own options from `cfg.backend`), `opts` the daemon's
switches that are flags rather than network config (BackendOptions). A backend raises
errors.BackendError for what it cannot do; see docs/architecture.md §"The backend contract".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol, Tuple

from ..config import NetworkConfig
from ..errors import BackendError
from ..lease import Lease, LeaseAttrs

DEFAULT_STATE_DIR = "/var/lib/fastflannel"

__all__ = ["DEFAULT_STATE_DIR", "Backend", "BackendError", "BackendOptions", "DualStackPeers", "Ipv6OnlyPeers",
           "PeerCalls"]


@dataclass(frozen=True)
class BackendOptions:
    """Daemon switches a backend may use. The defaults are the plain fast path; the daemon
    passes its flags (daemon.backend_options)."""

    state_dir: str = DEFAULT_STATE_DIR   # vxlan keeps its VTEP MAC here
    batch: int = 64                      # udp: packets per recvmmsg/sendmmsg (-fastpath-batch)
    workers: int = 1                     # udp: fast-path worker threads (-fastpath-workers)
    duplex: bool = False                 # udp: one thread per queue, both directions (-fastpath-duplex)
    offload: bool = False                # udp: segmentation offloads (-fastpath-offload)
    disable: Tuple[str, ...] = ()        # udp: offload parts kept off (-fastpath-disable)
    anti_spoof: bool = True              # udp: accept only known peers' inner sources (-udp-anti-spoof)


class Backend(Protocol):
    name: str

    def mtu(self) -> int:
        """FLANNEL_MTU for subnet.env (docs/flannel-compat.md §"MTU")."""
        ...

    def lease_attrs(self) -> LeaseAttrs: ...

    def setup(self, lease: Lease, cfg: NetworkConfig) -> None: ...

    def sync_peers(self, leases: Iterable[Lease]) -> None: ...

    def add_peer(self, lease: Lease) -> None: ...

    def remove_peer(self, lease: Lease) -> None: ...

    def check(self) -> None: ...

    def stats(self) -> dict: ...

    def close(self) -> None: ...


class V6Half(Protocol):
    """The IPv6 half of a backend (vxlan6.VxlanV6Device, hostgw6.HostGwV6Routes)."""

    def add(self, lease: Lease) -> None: ...

    def remove(self, lease: Lease) -> None: ...

    def sync(self, leases: Iterable[Lease]) -> None: ...

    def check(self) -> None: ...


class Ipv6OnlyPeers:
    """The peer calls of an IPv6-only backend (EnableIPv4 false): every one is its IPv6 half's,
    `self.v6`; the kernel forwards, so there are no counters of ours."""
    v6: V6Half

    def add_peer(self, lease: Lease) -> None:
        self.v6.add(lease)

    def remove_peer(self, lease: Lease) -> None:
        self.v6.remove(lease)

    def sync_peers(self, leases: Iterable[Lease]) -> None:
        self.v6.sync(list(leases))

    def check(self) -> None:
        self.v6.check()

    def stats(self) -> dict:
        return {}


class PeerCalls:
    """The peer calls as a base class: the IPv4 backends (host-gw, vxlan) derive from it so that
    DualStackPeers, put before them, reaches theirs through super()."""

    def add_peer(self, lease: Lease) -> None:
        raise NotImplementedError

    def remove_peer(self, lease: Lease) -> None:
        raise NotImplementedError

    def sync_peers(self, leases: Iterable[Lease]) -> None:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError


class DualStackPeers(PeerCalls):
    """The peer calls of a dual-stack backend, `class X(DualStackPeers, <IPv4 backend>)`: the
    IPv4 backend's call, then its IPv6 half's (`self.v6`)."""
    v6: V6Half

    def add_peer(self, lease: Lease) -> None:
        super().add_peer(lease)
        self.v6.add(lease)

    def remove_peer(self, lease: Lease) -> None:
        super().remove_peer(lease)
        self.v6.remove(lease)

    def sync_peers(self, leases: Iterable[Lease]) -> None:
        leases = list(leases)
        super().sync_peers(leases)
        self.v6.sync(leases)

    def check(self) -> None:
        super().check()
        self.v6.check()

