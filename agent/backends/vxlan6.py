"""vxlan's IPv6 half (EnableIPv6): flannel's second device `flannel-v6.<VNI>` and its per-peer
state over the IPv6 underlay (backend/vxlan/vxlan.go, vxlan_network.go, device.go;
docs/flannel-compat.md §"Dual-stack").

Device `flannel-v6.<VNI>`: id VNI, local = IfaceV6Addr, dev = the external interface, the same
Port/Learning/GBP as `flannel.<VNI>`, its own VTEP MAC (announced in BackendV6Data, kept in
`<state_dir>/vxlan6-<VNI>-<PublicIPv6>.mac`), MTU = (MTU option or interface MTU) − 70 (what the
kernel gives a vxlan device on an IPv6 underlay), address `<IPv6 lease IP>/128`. Per dual-stack
peer (IPv6 subnet S6, PublicIPv6 P6, BackendV6Data VtepMAC M6): a permanent neighbour
`S6.ip lladdr M6`, an FDB entry `M6 dst P6 self permanent`, then the route
`S6 via S6.ip dev flannel-v6.<VNI> onlink`. A peer without an IPv6 subnet gets IPv4 state only.

`DualStackVxlan` wraps the IPv4 backend (agent/backends/vxlan.py, unchanged) and calls this after
it for every lease event; check() recreates a deleted device and re-programs missing state,
sync_peers() prunes the state of vanished peers. With DirectRouting a peer whose PublicIPv6
`ip -6 route get` reaches without a gateway (on our link) gets `S6 via P6 dev <ext iface>`
instead of the three objects, as flannel's v6DirectRoute. The IPv6-only backend (no IPv4 device)
is agent/backends/vxlan6only.py.
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import tempfile
import threading
from typing import Dict, Iterable, Optional, Tuple

from .. import netlink, netlink6
from ..config import NetworkConfig
from ..errors import BackendError
from ..iface import ExternalInterface
from ..lease import Lease, LeaseAttrs, Slot, vtep_mac6
from ..peers import network6_problem
from .base import BackendOptions, DualStackPeers
from .vxlan import VxlanBackend, VxlanParams, _usable_mac, random_mac

log = logging.getLogger("fastflannel.vxlan")

IPv6Network = ipaddress.IPv6Network
IPv6Address = ipaddress.IPv6Address
ENCAP_OVERHEAD6 = 70         # bytes: outer IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
# (IPv6 subnet, PublicIPv6, VtepMAC of BackendV6Data, routed directly via PublicIPv6)
Peer6 = Tuple[IPv6Network, IPv6Address, str, bool]


class VxlanV6Device:
    def __init__(self, params: VxlanParams, ext: ExternalInterface, network6: IPv6Network):
        if ext.iface_v6_addr is None or ext.ext_v6_addr is None:
            raise BackendError(f"vxlan: EnableIPv6 needs an IPv6 address on {ext.name}")
        self.params, self.ext, self.network6 = params, ext, network6
        self.dev = f"flannel-v6.{params.vni}"
        self.own: Optional[IPv6Network] = None
        self.peers: Dict[Slot, Peer6] = {}           # by the lease's slot (lease.Lease.slot)
        self.ok: Dict[Slot, bool] = {}
        self.mac = self._load_mac()
        self._lock = threading.RLock()

    def mtu(self) -> int:
        return (self.params.mtu_opt or self.ext.mtu) - ENCAP_OVERHEAD6

    # -- MAC --------------------------------------------------------------------------------------
    def _mac_path(self) -> str:
        return os.path.join(self.params.state_dir, f"vxlan6-{self.params.vni}-{self.ext.ext_v6_addr}.mac")

    def _load_mac(self) -> str:
        try:
            with open(self._mac_path()) as f:
                mac = f.read().strip().lower()
            if _usable_mac(mac):
                return mac
        except OSError:
            pass
        mac = random_mac()
        self._save_mac(mac)
        return mac

    def _save_mac(self, mac: str) -> None:
        try:
            os.makedirs(self.params.state_dir, mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.params.state_dir, prefix=".vxlan6-mac-")
            with os.fdopen(fd, "w") as f:
                f.write(mac + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self._mac_path())
        except OSError as e:
            log.warning("cannot persist the IPv6 VTEP MAC (%s); a restart will announce a new one", e)

    def replace_mac(self) -> str:
        """Take a new random VTEP MAC (another host announces ours), keep it, put it on the
        device and re-program the peers (the kernel flushes a device's neighbours when its
        address changes); returns the new MAC to announce."""
        with self._lock:
            old = self.mac
            mac = random_mac(other_than=old)
            self.mac = mac
            self._save_mac(mac)
            if self.own is not None and self._index() is not None:
                try:
                    netlink.link_set_address(self.dev, mac)
                except netlink.NetlinkError as e:
                    log.error("vxlan: cannot set the new IPv6 VTEP MAC %s on %s: %s", mac, self.dev, e)
                self.ok = dict.fromkeys(self.peers, False)
                self.check()
            log.warning("vxlan: IPv6 VTEP MAC changed from %s to %s", old, mac)
            return mac

    # -- device -----------------------------------------------------------------------------------
    def _index(self) -> Optional[int]:
        return netlink.link_index(self.dev)

    def setup(self, lease: Lease) -> None:
        with self._lock:
            self.own = lease.ipv6_subnet
            try:
                self._configure()
            except netlink.NetlinkError as e:
                raise BackendError(f"vxlan: failed to set up {self.dev}: {e}") from None

    def _configure(self) -> None:
        local = self.ext.iface_v6_addr
        assert local is not None and self.own is not None
        info = None
        try:
            info = netlink.link_info(self.dev)
        except netlink.NetlinkError as e:
            if e.errno != errno.ENODEV:
                raise
        why = self._incompatible(info) if info is not None else None
        if why is not None:
            log.warning("%s already exists with incompatible configuration: %s; recreating device", self.dev, why)
            netlink.link_delete(self.dev)
            info = None
        if info is None:
            netlink6.vxlan6_create(self.dev, self.params.vni, local, self.ext.index, self.params.port,
                                   self.params.learning, self.params.gbp, self.mac, self.mtu())
        index = self._index()
        assert index is not None
        if netlink.link_info(self.dev)["address"] != self.mac:
            netlink.link_set_address(self.dev, self.mac)
        want = self.own.network_address
        for a in netlink6.addresses6(index):
            if a.ip != want and a.ip in self.network6:
                netlink6.address6_delete(index, a.ip, a.prefixlen)
        netlink6.address6_replace(index, want, 128)
        netlink.link_set_up(self.dev)

    def _incompatible(self, info: dict) -> Optional[str]:
        """Why a kept flannel-v6.<VNI> cannot be reused (as the IPv4 device's check)."""
        vx = info.get("vxlan")
        if info["kind"] != "vxlan" or not vx:
            return f"kind {info['kind']}"
        want = {"id": self.params.vni, "link": self.ext.index, "port": self.params.port or netlink.VXLAN_DEFAULT_PORT,
                "gbp": self.params.gbp, "learning": self.params.learning}
        diffs = [f"{k} {vx.get(k)} != {w}" for k, w in want.items() if vx.get(k) != w]
        local = netlink6.vxlan6_local(info["index"])
        if local != self.ext.iface_v6_addr:
            diffs.append(f"local {local} != {self.ext.iface_v6_addr}")
        return ", ".join(diffs) or None

    # -- peers ------------------------------------------------------------------------------------
    def wanted(self, lease: Lease) -> Optional[Peer6]:
        a, sn6 = lease.attrs, lease.ipv6_subnet
        if a is None or sn6 is None or a.public_ipv6 is None or a.backend_type != "vxlan" or sn6 == self.own:
            return None
        why = network6_problem(sn6, self.network6)
        mac = vtep_mac6(a)
        if why is not None or mac is None:
            log.warning("vxlan: refusing the IPv6 half of lease %s: %s", lease.key,
                        why or "no VtepMAC in BackendV6Data")
            return None
        return sn6, a.public_ipv6, mac, self._direct(a.public_ipv6)

    def _direct(self, pub6: IPv6Address) -> bool:
        """DirectRouting and `ip -6 route get PublicIPv6` shows no gateway: the peer is on our
        link, so its subnet is routed via PublicIPv6 without VXLAN (flannel's v6DirectRoute)."""
        if not self.params.direct_routing:
            return False
        try:
            return netlink6.route_get6_gateway(pub6) is None
        except netlink.NetlinkError as e:
            log.warning("route get %s failed (%s); using the overlay", pub6, e)
            return False

    def add(self, lease: Lease) -> None:
        with self._lock:
            slot = lease.slot
            want, old = self.wanted(lease), self.peers.get(slot)
            if old is not None and old != want:
                self._unprogram(old, slot)
                del self.peers[slot]
            if want is not None and (old != want or not self.ok.get(slot)):
                self.peers[slot] = want
                self.ok[slot] = self._program(want)

    def remove(self, lease: Lease) -> None:
        with self._lock:
            peer = self.peers.pop(lease.slot, None) or (self.wanted(lease) if lease.attrs else None)
            self.ok.pop(lease.slot, None)
            if peer is not None:
                log.info("removing vxlan IPv6 peer %s", peer[0])
                self._unprogram(peer, lease.slot)

    def sync(self, leases: Iterable[Lease]) -> None:
        with self._lock:
            wanted = {lease.slot: (lease, w) for lease in leases if (w := self.wanted(lease)) is not None}
            for sn in [s for s in self.peers if s not in wanted]:
                self._unprogram(self.peers.pop(sn), sn)
                self.ok.pop(sn, None)
            for lease, _ in wanted.values():
                self.add(lease)
            self._prune()

    def _program(self, p: Peer6) -> bool:
        sn6, pub6, mac, direct = p
        index = self._index()
        try:
            if direct:
                netlink6.route6_replace(sn6, pub6, self.ext.index)
                log.info("vxlan IPv6 peer %s: direct route via %s dev %s", sn6, pub6, self.ext.name)
                return True
            if index is None:
                raise netlink.NetlinkError(f"{self.dev} does not exist", errno.ENODEV)
            netlink6.neigh6_replace(index, sn6.network_address, mac)
            netlink6.fdb6_replace(index, mac, pub6)
            netlink6.route6_replace(sn6, sn6.network_address, index, onlink=True)
        except Exception as e:  # NetlinkError, or a bug: this peer only; check() retries
            log.error("vxlan: IPv6 peer %s (%s at %s): %s", sn6, mac, pub6, e)
            return False
        log.info("vxlan IPv6 peer %s: %s at %s", sn6, mac, pub6)
        return True

    def _unprogram(self, p: Peer6, slot: Slot) -> None:
        """Delete p's route, and its neighbour and FDB entry unless another peer shares them;
        every step runs."""
        sn6, pub6, mac, direct = p
        if direct:
            self._quiet(netlink6.route6_delete, sn6, pub6, self.ext.index)
            return
        index = self._index()
        if index is None:
            return
        others = [q for s, q in self.peers.items() if s != slot and not q[3]]
        self._quiet(netlink6.route6_delete, sn6, None, index)
        if not any(q[0].network_address == sn6.network_address for q in others):
            self._quiet(netlink6.neigh6_delete, index, sn6.network_address)
        if not any(q[2] == mac for q in others):
            self._quiet(netlink6.fdb6_delete, index, mac, pub6)

    @staticmethod
    def _quiet(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # a clean-up step must never skip the next ones
            log.debug("ignored: %s%s: %s", fn.__name__, args, e)

    def check(self) -> None:
        with self._lock:
            if self.own is None:
                return
            if self._index() is None:
                log.warning("%s was deleted; recreating it and re-programming %d peers", self.dev, len(self.peers))
                try:
                    self._configure()
                except netlink.NetlinkError as e:
                    log.error("vxlan: cannot recreate %s: %s", self.dev, e)
                    return
                self.ok = dict.fromkeys(self.peers, False)
            index = self._index()
            assert index is not None
            routes = {(r.dst, r.gateway) for r in netlink6.routes6(index)}
            direct = ({(r.dst, r.gateway) for r in netlink6.routes6(self.ext.index)}
                      if self.params.direct_routing else set())
            neigh = {(n.ip, n.mac) for n in netlink6.neigh6_list(index)}
            fdb = {(n.mac, n.ip) for n in netlink6.fdb6_list(index)}
            for slot, p in self.peers.items():
                sn6, pub6, mac, is_direct = p
                intact = ((sn6, pub6) in direct if is_direct else
                          (sn6, sn6.network_address) in routes and (sn6.network_address, mac) in neigh
                          and (mac, pub6) in fdb)
                if not (intact and self.ok.get(slot)):
                    self.ok[slot] = self._program(p)

    def _prune(self) -> None:
        index = self._index()
        if index is None:
            return
        live = {p for p in self.peers.values() if not p[3]}
        if self.params.direct_routing:
            self._prune_direct()
        for r in netlink6.routes6(index):
            if r.gateway is not None and r.dst.subnet_of(self.network6) and not any(r.dst == p[0] for p in live):
                log.info("pruning stale route %s dev %s", r.dst, self.dev)
                self._quiet(netlink6.route6_delete, r.dst, r.gateway, index)
        for n in netlink6.neigh6_list(index):
            if n.ip is not None and n.state & netlink6.NUD_PERMANENT and n.ip in self.network6 \
                    and not any(n.ip == p[0].network_address for p in live):
                self._quiet(netlink6.neigh6_delete, index, n.ip)
        for e in netlink6.fdb6_list(index):
            if e.ip is not None and e.mac and e.mac != "00:00:00:00:00:00" and not any(e.mac == p[2] for p in live):
                self._quiet(netlink6.fdb6_delete, index, e.mac, e.ip)


    def _prune_direct(self) -> None:
        """Direct routes inside IPv6Network via the external interface that no live peer wants
        (a peer that vanished while we were down)."""
        live = {(p[0], p[1]) for p in self.peers.values() if p[3]}
        for r in netlink6.routes6(self.ext.index):
            if (r.gateway is not None and r.dst.subnet_of(self.network6) and r.dst != self.network6
                    and r.dst != self.own and (r.dst, r.gateway) not in live):
                log.info("pruning stale direct route %s via %s", r.dst, r.gateway)
                self._quiet(netlink6.route6_delete, r.dst, r.gateway, self.ext.index)


class DualStackVxlan(DualStackPeers, VxlanBackend):
    """vxlan with EnableIPv6: the IPv4 backend, then the IPv6 device and peers."""
    v6: VxlanV6Device

    def __init__(self, ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions):
        super().__init__(ext, cfg, opts)
        assert cfg.ipv6_network is not None
        self.v6 = VxlanV6Device(self.params, ext, cfg.ipv6_network)

    def lease_attrs(self) -> LeaseAttrs:
        return dataclasses.replace(super().lease_attrs(), public_ipv6=self.ext.ext_v6_addr,
                                   backend_v6_data={"VNI": self.params.vni, "VtepMAC": self.v6.mac})

    def setup(self, lease: Lease, cfg: NetworkConfig) -> None:
        super().setup(lease, cfg)
        self.v6.setup(lease)


