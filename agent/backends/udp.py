"""udp backend: TUN `flannel%d` + the C fast path, flannel's wire format (FLANNEL.md §4).

The TUN carries `<lease IP>/32`, MTU = interface MTU − 28 (IPv4 20 + UDP 8) and the route
`<Network> dev flannel0`; the UDP socket is bound to the interface address on Backend.Port
(8285). Every peer lease becomes one fast-path route `<subnet> → <PublicIP>:<Port>`; like flannel,
the udp backend does not filter peers by BackendType (the lease carries no port, so every node
uses the configured one).
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional

import numpy as np

from .. import netlink
from ..config import ci_get
from ..lease import Lease, LeaseAttrs
from .base import BackendError

log = logging.getLogger("fastflannel.udp")

DEFAULT_PORT = 8285
ENCAP_OVERHEAD = 28          # bytes: outer IPv4 (20) + UDP (8) headers
TUN_TEMPLATE = "flannel%d"
# The TUN's default txqueuelen (500) overflows under one TCP stream: each drop is a retransmit
# (measured: ~15k drops in 4 s at 500, none at 5000; PERF.md §5.1, Firezone #10231).
TUN_TXQUEUELEN = 5000


def _sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as e:
        log.warning("cannot set %s=%s: %s", key.replace("/", "."), value, e)


class UdpBackend:
    name = "udp"

    def __init__(self, ext, backend_cfg: dict, *, batch: int = 64, anti_spoof: bool = True,
                 workers: int = 1, offload: bool = False):
        self.ext = ext
        try:
            self.port = int(ci_get(backend_cfg, "Port", 0) or DEFAULT_PORT)
        except (TypeError, ValueError):
            raise BackendError(f"udp backend: bad Port {ci_get(backend_cfg, 'Port')!r}") from None
        if not 0 < self.port < 65536:
            raise BackendError(f"udp backend: Port {self.port} out of range")
        self.batch, self.anti_spoof = batch, anti_spoof
        self.workers, self.offload = workers, offload
        self.fw = None
        self.tun_name: Optional[str] = None
        self.lease: Optional[Lease] = None
        self.network = None            # the cluster Network (IPv4Network), set by setup()

    def mtu(self) -> int:
        return self.ext.mtu - ENCAP_OVERHEAD

    def lease_attrs(self) -> LeaseAttrs:
        # flannel's udp backend sets neither BackendType nor BackendData.
        return LeaseAttrs(public_ip=self.ext.ext_addr)

    def setup(self, lease: Lease, network) -> None:
        from ...fastpath import Forwarder   # the extension loads only when this backend runs

        self.lease, self.network = lease, network.network
        fw = Forwarder()
        try:
            fw.open(tun=TUN_TEMPLATE, bind_ip=str(self.ext.iface_addr), port=self.port,
                    tun_ip=str(lease.subnet.network_address), mtu=self.mtu(), batch=self.batch,
                    anti_spoof=self.anti_spoof, **self._tier_options())
        except (OSError, ValueError) as e:
            fw.close()
            raise BackendError(f"udp backend: cannot open the fast path on "
                               f"{self.ext.iface_addr}:{self.port}: {e}") from None
        self.fw, self.tun_name = fw, fw.tun_name
        netlink.link_set_mtu(self.tun_name, self.mtu())
        netlink.link_set_txqueuelen(self.tun_name, TUN_TXQUEUELEN)
        netlink.ensure_single_address(self.tun_name, lease.subnet.network_address, 32, network.network)
        netlink.link_set_up(self.tun_name)
        netlink.route_replace(network.network, dev=self.tun_name)
        # The fast path's ICMP net-unreachable carries the TUN address as source (flannel's
        # choice); without accept_local the kernel drops it as a martian and senders just time out.
        _sysctl(f"net/ipv4/conf/{self.tun_name}/accept_local", "1")
        fw.start()
        log.info("udp backend: %s up, %s/32, mtu %d, udp %s:%d", self.tun_name,
                 lease.subnet.network_address, self.mtu(), self.ext.iface_addr, self.port)

    def _tier_options(self) -> dict:
        # Offload and multi-queue tiers are opt-in switches of the forwarder (PERF.md tiers 2, 3).
        opts = {}
        if self.workers != 1:
            opts["workers"] = self.workers
        if self.offload:
            opts["offload"] = True
        return opts

    # -- peers ----------------------------------------------------------------------------------
    def _routes_array(self, leases: Iterable[Lease]) -> np.ndarray:
        from ...fastpath import ROUTE_DTYPE

        rows = [(int(l.subnet.network_address), l.subnet.prefixlen, int(l.attrs.public_ip), self.port)
                for l in leases if l.attrs is not None]
        return np.array(rows, dtype=ROUTE_DTYPE)

    def sync_peers(self, leases: Iterable[Lease]) -> None:
        arr = self._routes_array(leases)
        self.fw.replace_routes(arr)
        log.info("udp backend: %d peer routes", len(arr))

    def add_peer(self, lease: Lease) -> None:
        self.fw.add_route(str(lease.subnet), str(lease.attrs.public_ip), self.port)
        log.info("udp backend: route %s -> %s:%d", lease.subnet, lease.attrs.public_ip, self.port)

    def remove_peer(self, lease: Lease) -> None:
        try:
            self.fw.remove_route(str(lease.subnet))
            log.info("udp backend: route %s removed", lease.subnet)
        except KeyError:
            log.info("udp backend: no route for %s to remove", lease.subnet)

    def check(self) -> None:
        """Re-add the Network route if someone deleted it (the TUN itself lives as long as we do)."""
        if self.tun_name and self.network is not None:
            netlink.route_replace(self.network, dev=self.tun_name)

    def stats(self) -> dict:
        return self.fw.stats() if self.fw else {}

    def close(self) -> None:
        # As flannel: the TUN disappears with its fd; the lease stays in etcd.
        if self.fw is not None:
            self.fw.stop()
            self.fw.close()
            self.fw = None
