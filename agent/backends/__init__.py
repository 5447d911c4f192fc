"""Backends turn lease events into data-plane state; one module each, chosen by name.

`BACKENDS` maps a network config's Backend.Type to a constructor with one signature,
`(ext, cfg, opts) -> Backend` (flannel's pkg/backend/manager.go: `Register(name, ctor)` with one
`BackendCtor`). A backend's module is imported only when it is chosen: udp pulls in the C fast
path and numpy, which a vxlan or host-gw host never loads. The contract is in `base.py`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, FrozenSet

from ..errors import BackendError

if TYPE_CHECKING:
    from ..config import NetworkConfig
    from ..iface import ExternalInterface
    from .base import Backend, BackendOptions

BackendCtor = Callable[["ExternalInterface", "NetworkConfig", "BackendOptions"], "Backend"]


def _udp(ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions) -> Backend:
    from .udp import UdpBackend
    return UdpBackend(ext, cfg, opts)


def _vxlan(ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions) -> Backend:
    if cfg.ipv6_only:
        from .vxlan6only import Ipv6OnlyVxlan
        return Ipv6OnlyVxlan(ext, cfg, opts)
    if cfg.enable_ipv6:
        from .vxlan6 import DualStackVxlan
        return DualStackVxlan(ext, cfg, opts)
    from .vxlan import VxlanBackend
    return VxlanBackend(ext, cfg, opts)


def _hostgw(ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions) -> Backend:
    if cfg.ipv6_only:
        from .hostgw6 import Ipv6OnlyHostGw
        return Ipv6OnlyHostGw(ext, cfg, opts)
    if cfg.enable_ipv6:
        from .hostgw6 import DualStackHostGw
        return DualStackHostGw(ext, cfg, opts)
    from .hostgw import HostGwBackend
    return HostGwBackend(ext, cfg, opts)


BACKENDS: Dict[str, BackendCtor] = {"udp": _udp, "vxlan": _vxlan, "host-gw": _hostgw}
# The backends that program IPv6 (EnableIPv6, docs/flannel-compat.md §"Dual-stack"); udp is IPv4
# only, as flannel's.
IPV6_BACKENDS: FrozenSet[str] = frozenset({"host-gw", "vxlan"})


def register(name: str, ctor: BackendCtor) -> None:
    """Add (or replace) the constructor for Backend.Type `name` (lower case)."""
    BACKENDS[name] = ctor


def new_backend(ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions) -> Backend:
    """The backend `cfg.backend_type` names, constructed (flannel's manager.GetBackend)."""
    ctor = BACKENDS.get(cfg.backend_type)
    if ctor is None:
        raise BackendError(f"unknown backend type: {cfg.backend_type}")
    return ctor(ext, cfg, opts)
