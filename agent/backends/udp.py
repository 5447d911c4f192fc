"""udp backend: TUN `flannel%d` + the C fast path, flannel's wire format
(docs/flannel-compat.md §"udp device and socket", §"udp wire format").

The TUN carries `<lease IP>/32`, MTU = interface MTU − 28 (IPv4 20 + UDP 8) and the route
`<Network> dev flannel0`; the UDP socket is bound to the interface address on Backend.Port
(8285). Every peer lease becomes one fast-path route `<subnet> → <PublicIP>:<Port>`; like flannel,
the udp backend does not filter peers by BackendType (the lease carries no port, so every node
uses the configured one). A lease outside Network is never routed (docs/architecture.md
§"Lease admission"; the daemon's admission refuses it first).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional

from ...fastpath import (  # offload keywords of Forwarder.open
    DROP_REASONS,
    OFFLOAD_PARTS,
    ROUTE_ITEMSIZE,
    Forwarder,
    pack_route,
)
from .. import metrics, netlink
from ..config import NetworkConfig
from ..errors import BackendError, NetlinkError
from ..iface import ExternalInterface
from ..lease import IPv4Network, Lease, LeaseAttrs
from ..peers import network_problem
from .base import BackendOptions

log = logging.getLogger("fastflannel.udp")

DEFAULT_PORT = 8285
ENCAP_OVERHEAD = 28          # bytes: outer IPv4 (20) + UDP (8) headers
TUN_TEMPLATE = "flannel%d"
# The TUN's default txqueuelen (500) overflows under one TCP stream: each drop is a retransmit
# (measured: ~15k drops in 4 s at 500, none at 5000; Firezone #10231).
TUN_TXQUEUELEN = 5000


def _sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError as e:
        log.warning("cannot set %s=%s: %s", key.replace("/", "."), value, e)


@contextmanager
def _fast_path_errors(what: str) -> Iterator[None]:
    """The fast path reports its C errors as OSError/ValueError; past this boundary they are
    BackendError. KeyError (no such route) passes: callers treat it as "nothing to do"."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise BackendError(f"udp backend: cannot {what}: {e}") from None


def _features_text(f: dict) -> str:
    on = [k.replace("_", "-") for k, v in f.items() if v is True]
    return f"workers {f.get('workers', 1)}, offload " + (",".join(on) if on else "off")


class UdpBackend:
    name = "udp"

    def __init__(self, ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions):
        self.ext = ext
        port = cfg.backend_option("Port", 0)
        try:
            self.port = int(port or DEFAULT_PORT)
        except (TypeError, ValueError):
            raise BackendError(f"udp backend: bad Port {port!r}") from None
        if not 0 < self.port < 65536:
            raise BackendError(f"udp backend: Port {self.port} out of range")
        self.batch, self.anti_spoof = opts.batch, opts.anti_spoof
        self.workers, self.offload, self.duplex = opts.workers, opts.offload, opts.duplex
        # offload parts kept off (-fastpath-disable: "udp-gso", ...), as Forwarder.open keywords
        self.disable = tuple(p.replace("-", "_") for p in opts.disable)
        unknown = [p for p in self.disable if p not in OFFLOAD_PARTS]
        if unknown:
            raise BackendError(f"udp backend: unknown offload part {unknown[0]!r}")
        self._features: Optional[dict] = None
        self.fw: Optional[Forwarder] = None
        self.tun_name: Optional[str] = None
        self.network: Optional[IPv4Network] = None     # the cluster Network, set by setup()

    def mtu(self) -> int:
        return self.ext.mtu - ENCAP_OVERHEAD

    def lease_attrs(self) -> LeaseAttrs:
        # flannel's udp backend sets neither BackendType nor BackendData.
        return LeaseAttrs(public_ip=self.ext.ext_addr)

    def setup(self, lease: Lease, cfg: NetworkConfig) -> None:
        self.network = cfg.network
        fw = Forwarder()
        try:
            fw.open(tun=TUN_TEMPLATE, bind_ip=str(self.ext.iface_addr), port=self.port,
                    tun_ip=str(lease.subnet.network_address), tun_prefix=lease.subnet.prefixlen,
                    mtu=self.mtu(), batch=self.batch,
                    anti_spoof=self.anti_spoof, **self._tier_options())
        except (OSError, ValueError) as e:
            fw.close()
            raise BackendError(f"udp backend: cannot open the fast path on "
                               f"{self.ext.iface_addr}:{self.port}: {e}") from None
        self.fw, self.tun_name = fw, fw.tun_name
        try:
            self._configure_tun(lease)
        except NetlinkError as e:
            raise BackendError(f"udp backend: cannot configure {self.tun_name}: {e}") from None
        # The fast path's ICMP net-unreachable carries the TUN address as source (flannel's
        # choice); without accept_local the kernel drops it as a martian and senders just time out.
        _sysctl(f"net/ipv4/conf/{self.tun_name}/accept_local", "1")
        with _fast_path_errors("start the fast path"):
            fw.start()
        log.info("udp backend: %s up, %s/32, mtu %d, udp %s:%d, fast path %s", self.tun_name,
                 lease.subnet.network_address, self.mtu(), self.ext.iface_addr, self.port,
                 _features_text(fw.features))
        self._log_fallbacks()

    def _configure_tun(self, lease: Lease) -> None:
        assert self.tun_name is not None and self.network is not None
        netlink.link_set_mtu(self.tun_name, self.mtu())
        netlink.link_set_txqueuelen(self.tun_name, TUN_TXQUEUELEN)
        netlink.ensure_single_address(self.tun_name, lease.subnet.network_address, 32, self.network)
        netlink.link_set_up(self.tun_name)
        netlink.route_replace(self.network, dev=self.tun_name)

    def _asked(self) -> set:
        """The offload parts this backend asked the fast path for."""
        if not self.offload:
            return set()
        asked = {p for p in OFFLOAD_PARTS if p not in self.disable}
        if "tun_tso" not in asked:
            asked.discard("tcp_gro")           # merged TUN writes need the TUN's vnet header
        return asked

    def _log_fallbacks(self) -> None:
        """Log each offload part asked for but off now (the kernel refused it at open, or later:
        EIO on a GSO send, EINVAL on a GSO TUN write); once per part."""
        fw = self._forwarder()
        now = fw.features
        prev = self._features or {}
        for part in sorted(self._asked()):
            if not now.get(part) and prev.get(part, True):
                log.warning("udp backend: fast-path offload %s refused by the kernel, now off "
                            "(offload_fallbacks=%d)", part.replace("_", "-"),
                            fw.stats().get("offload_fallbacks", 0))
        self._features = dict(now)

    def _tier_options(self) -> dict:
        # Offloads (tier 2, the daemon's default) and multi-queue workers (tier 3), docs/fastpath.md; each
        # offload part can be kept off on its own (-fastpath-disable).
        opts = {}
        if self.workers != 1:
            opts["workers"] = self.workers
        if self.duplex:
            opts["duplex"] = True
        if self.offload:
            opts["offload"] = True
            opts.update({part: False for part in self.disable})
        return opts

    # -- peers ----------------------------------------------------------------------------------
    def _routable(self, lease: Lease) -> bool:
        if lease.attrs is None:
            return False
        why = network_problem(lease.subnet, self.network) if self.network is not None else None
        if why is not None:
            log.warning("udp backend: refusing lease %s: it %s", lease.subnet, why)
            return False
        return True

    def _routes_table(self, leases: Iterable[Lease]) -> bytes:
        """The fast path's whole table as packed routes (no numpy in the agent: docs/fastpath.md
        §"The agent's boundary"); leases outside Network left out."""
        return b"".join(pack_route(int(lease.subnet.network_address), lease.subnet.prefixlen,
                                   int(lease.attrs.public_ip), self.port)
                        for lease in leases if self._routable(lease) and lease.attrs is not None)

    def sync_peers(self, leases: Iterable[Lease]) -> None:
        table = self._routes_table(leases)
        with _fast_path_errors("replace the peer routes"):
            self._forwarder().replace_routes(table)       # one bulk replace, one table swap
        log.info("udp backend: %d peer routes", len(table) // ROUTE_ITEMSIZE)

    def add_peer(self, lease: Lease) -> None:
        if not self._routable(lease) or lease.attrs is None:
            return
        with _fast_path_errors(f"add the route {lease.subnet}"):
            self._forwarder().add_route(str(lease.subnet), str(lease.attrs.public_ip), self.port)
        log.info("udp backend: route %s -> %s:%d", lease.subnet, lease.attrs.public_ip, self.port)

    def remove_peer(self, lease: Lease) -> None:
        try:
            with _fast_path_errors(f"remove the route {lease.subnet}"):
                self._forwarder().remove_route(str(lease.subnet))
            log.info("udp backend: route %s removed", lease.subnet)
        except KeyError:
            log.info("udp backend: no route for %s to remove", lease.subnet)

    def _forwarder(self) -> Forwarder:
        if self.fw is None:
            raise BackendError("udp backend: the fast path is not open (setup() first)")
        return self.fw

    def check(self) -> None:
        """Re-add the Network route if someone deleted it (the TUN itself lives as long as we do)."""
        if self.tun_name and self.network is not None:
            netlink.route_replace(self.network, dev=self.tun_name)
        if self.fw is not None:
            self._log_fallbacks()

    def stats(self) -> dict:
        return self.fw.stats() if self.fw else {}

    def describe(self) -> dict:
        """The options `fastflannel status` shows (offload: the parts active now)."""
        fw = self.fw
        features = dict(fw.features) if fw is not None else {}
        features.pop("workers", None)
        return {"device": self.tun_name, "port": self.port, "mtu": self.mtu(), "batch": self.batch,
                "workers": self.workers, "anti_spoof": self.anti_spoof, "offload": features}

    def observe(self) -> metrics.DataPlane:
        """The fast path's counters, per-peer rows, unknown senders and offload fallbacks, and the
        TUN's link statistics (its drops show a full txqueue), read now."""
        fw = self._forwarder()
        unknown, other = fw.unknown_senders()
        d = metrics.DataPlane(counters=fw.stats(), drop_reasons=DROP_REASONS, peers=fw.peer_stats(),
                              unknown_senders=unknown, unknown_other=other, fallbacks=fw.offload_fallbacks(),
                              features=fw.features)
        if self.tun_name:
            try:
                d.devices[self.tun_name] = netlink.link_stats(self.tun_name)
            except NetlinkError:
                pass
        return d

    def close(self) -> None:
        # As flannel: the TUN disappears with its fd; the lease stays in etcd.
        if self.fw is not None:
            self.fw.stop()
            self.fw.close()
            self.fw = None
