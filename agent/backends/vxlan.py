"""vxlan backend: a kernel VXLAN device with flannel's v0.9+ per-peer scheme
(docs/flannel-compat.md §"vxlan device", §"vxlan per-peer state").

Device `flannel.<VNI>`: id VNI, local = ExtAddr (flannel v0.27.4+), dev = the external interface,
dstport when Port > 0 (else the kernel's 8472), nolearning unless Learning, gbp when GBP, MTU =
(MTU option or interface MTU) − 50, address `<lease IP>/32`. Per peer lease (subnet S, PublicIP
P, VtepMAC M): a permanent neighbour `S.ip lladdr M`, an FDB entry `M dst P self permanent`, and
last the route `S via S.ip dev flannel.<VNI> onlink`, so the kernel never has to ARP. With
DirectRouting, a peer on the same link gets a plain `S via P` route instead.

Beyond flannel: the VTEP MAC is kept in `<state_dir>/vxlan-<VNI>-<PublicIP>.mac` so a restart
announces the same MAC (peers keep their entries); sync_peers() prunes the state of peers that
vanished while we were down; check() recreates a deleted device *and* replays the peers (flannel's
watcher does not), puts our MAC back if something changed it, and re-programs any peer whose
neighbour, FDB entry or route went missing.

The MAC file is keyed by the PublicIP, the identity flannel itself gives a host (its lease is
reused by PublicIP): stable across restarts, yet different for every daemon of one machine (the
namespaces of a lab, each with its own address) and for cloned VMs (each with its own address).
The subnet-file path would not tell clones apart, and a network namespace has no name or number
that survives a reboot. When another host announces our MAC anyway, `replace_vtep_mac()` takes a
new one (the daemon then announces it, docs/architecture.md §"Lease admission").

Kernel objects shared by several leases (a copied lease with the same PublicIP and VtepMAC
shares the live peer's FDB entry) are removed only with the last peer that uses them, and every
peer is programmed, removed and repaired on its own: an error in one never stops the others, nor
the rest of that peer's clean-up. Those objects, in batches and O(1) per lease event, are
agent/backends/vxlan_peers.py.
"""
from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import secrets
import tempfile
import threading
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Set, Tuple

from .. import metrics, netlink, rtnl
from ..config import NetworkConfig
from ..errors import BackendError
from ..iface import ExternalInterface
from ..lease import Lease, LeaseAttrs, valid_peer_mac, vtep_mac
from ..peers import network_problem
from .base import BackendOptions, PeerCalls
from .vxlan_peers import PeerObjects, _Peer

if TYPE_CHECKING:
    from ..kernelwatch import Changes, KernelWatch

log = logging.getLogger("fastflannel.vxlan")

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
ENCAP_OVERHEAD = 50          # bytes: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
DEFAULT_VNI = 1


def _int_opt(cfg: NetworkConfig, key: str, default: int, lo: int, hi: int) -> int:
    v = cfg.backend_option(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or not lo <= int(v) <= hi:
        raise BackendError(f"vxlan backend: bad {key} {v!r} (want an integer in {lo}..{hi})")
    return int(v)


@dataclasses.dataclass(frozen=True)
class VxlanParams:
    """The vxlan backend's options from the config (flannel's names and defaults), read once for
    the IPv4 device, the IPv6 one (agent/backends/vxlan6.py) and IPv6-only vxlan
    (agent/backends/vxlan6only.py)."""
    vni: int
    port: int
    mtu_opt: int
    gbp: bool
    learning: bool
    direct_routing: bool
    state_dir: str

    @classmethod
    def from_config(cls, cfg: NetworkConfig, opts: BackendOptions) -> VxlanParams:
        return cls(vni=_int_opt(cfg, "VNI", DEFAULT_VNI, 0, (1 << 24) - 1), port=_int_opt(cfg, "Port", 0, 0, 65535),
                   mtu_opt=_int_opt(cfg, "MTU", 0, 0, 65535), gbp=bool(cfg.backend_option("GBP", False)),
                   learning=bool(cfg.backend_option("Learning", False)),
                   direct_routing=bool(cfg.backend_option("DirectRouting", False)), state_dir=opts.state_dir)


def random_mac(other_than: Optional[str] = None) -> str:
    """A random locally administered unicast MAC (flannel v0.15.1+ RandomHardwareAddr), never
    `other_than` (the MAC another host turned out to announce too)."""
    while True:
        b = bytearray(secrets.token_bytes(6))
        b[0] = (b[0] & 0xFE) | 0x02
        mac = ":".join(f"{x:02x}" for x in b)
        if mac != other_than:
            return mac


def _usable_mac(mac: Optional[str]) -> bool:
    """Our own VTEP MAC: a unicast MAC that is locally administered (flannel v0.15.1+)."""
    return valid_peer_mac(mac) and bool(int(str(mac)[:2], 16) & 0x02)


class VxlanBackend(PeerObjects, PeerCalls):
    name = "vxlan"

    def __init__(self, ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions):
        self.ext = ext
        self.params = VxlanParams.from_config(cfg, opts)
        self.dev = f"flannel.{self.params.vni}"
        self.mac = self._load_mac()
        self.lease: Optional[Lease] = None
        self.network: Optional[IPv4Network] = None
        self.peers: Dict[IPv4Network, _Peer] = {}
        self._lock = threading.RLock()
        self._ifindex = 0                # of self.dev, for the raw requests (agent/rtnl.py)
        self._watch: Optional[KernelWatch] = None
        # Who uses each shared kernel object, so removing one peer keeps what another still
        # needs without scanning every peer: VTEP address -> subnets, (MAC, PublicIP) -> subnets.
        self._by_vtep: Dict[int, Set[IPv4Network]] = {}
        self._by_fdb: Dict[Tuple[str, int], Set[IPv4Network]] = {}

    # -- contract --------------------------------------------------------------------------------
    def mtu(self) -> int:
        return (self.params.mtu_opt or self.ext.mtu) - ENCAP_OVERHEAD

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.ext_addr, "vxlan", {"VNI": self.params.vni, "VtepMAC": self.mac})

    def setup(self, lease: Lease, cfg: NetworkConfig) -> None:
        with self._lock:
            self.lease, self.network = lease, cfg.network
            self._configure_device(lease, cfg.network)

    def add_peer(self, lease: Lease) -> None:
        with self._lock:
            self._add(lease)

    def remove_peer(self, lease: Lease) -> None:
        with self._lock:
            self._remove(lease)

    def sync_peers(self, leases: Iterable[Lease]) -> None:
        with self._lock:
            wanted = {}
            for lease in leases:
                if self._peer_attrs(lease) is not None:
                    wanted[lease.subnet] = lease
            for sn in [s for s in self.peers if s not in wanted]:
                self._isolated(f"removing peer {sn}", self._remove, self.peers[sn].lease)
            self._start_watch()            # before programming: a deletion in between is reported
            pending: List[_Peer] = []
            for lease in wanted.values():
                self._isolated(f"adding peer {lease.subnet}", self._add, lease, pending)
            self._program_many(pending)
            self._prune(wanted)
            log.info("vxlan: %d peers (%d programmed now)", len(self.peers), len(pending))

    def check(self) -> None:
        """The 10 s tick: recreate a deleted device, put our MAC back, re-program the peers whose
        objects the kernel reported deleted since the last tick (all of them after lost
        notifications or a link change), or, without a notification socket, compare every peer
        with a dump."""
        with self._lock:
            if self.lease is None or self.network is None:
                return
            self._check_device(self.lease, self.network)
            self._repair(self._poll_watch())

    def _check_device(self, lease: Lease, network: IPv4Network) -> None:
        try:
            info: Optional[dict] = netlink.link_info(self.dev)
        except netlink.NetlinkError as e:
            if e.errno != errno.ENODEV:
                raise
            info = None
        if info is None:
            log.warning("%s was deleted; recreating it and re-programming %d peers", self.dev, len(self.peers))
            metrics.REPAIRS.labels("device").inc()
            self._configure_device(lease, network)
            for p in self.peers.values():
                p.ok = False
        elif info["address"] != self.mac:
            log.warning("%s has MAC %s, not our VTEP MAC %s; setting it back", self.dev, info["address"], self.mac)
            self._set_mac()

    def _on_kernel(self, changes: Changes) -> None:
        """The watch thread's report (agent/kernelwatch.py): repaired now, not at the next tick;
        a change of our device (deleted, its MAC rewritten) is checked first."""
        with self._lock:
            if self.lease is None or self.network is None:
                return
            if any(link.ifindex == self._ifindex for link in changes.links):
                self._check_device(self.lease, self.network)
            self._repair(changes)

    def _repair(self, changes: Optional[Changes]) -> None:
        if changes is None or changes.overflow or any(
                link.ifindex in (self._ifindex, self.ext.index) for link in changes.links):
            self._repair_peers()
        else:
            self._repair_reported(changes)

    def replace_vtep_mac(self) -> LeaseAttrs:
        """Take a new random VTEP MAC (another host announces ours: the kernel cannot tell us
        apart), keep it and put it on the device; returns the lease attrs to announce."""
        with self._lock:
            old = self.mac
            mac = random_mac(other_than=old)
            self.mac = mac
            self._save_mac(mac)
            if self.lease is not None:
                try:
                    self._set_mac()
                except netlink.NetlinkError as e:   # check() sets it again
                    log.error("vxlan: cannot set the new VTEP MAC %s on %s: %s", mac, self.dev, e)
            log.warning("vxlan: VTEP MAC changed from %s to %s", old, mac)
            return self.lease_attrs()

    def _set_mac(self) -> None:
        """Put our MAC on the device. The kernel flushes a device's neighbours, permanent ones
        too, when its address changes (neigh_changeaddr): re-program the peers at once, or
        traffic to us would wait for the next check()."""
        netlink.link_set_address(self.dev, self.mac)
        for p in self.peers.values():
            p.ok = False
        self._repair_peers()

    def stats(self) -> dict:
        return {}     # the kernel forwards; it keeps no counters of ours

    def describe(self) -> dict:
        """The options `fastflannel status` shows."""
        return {"device": self.dev, "vni": self.params.vni, "port": self.params.port or netlink.VXLAN_DEFAULT_PORT,
                "mtu": self.mtu(), "vtep_mac": self.mac, "gbp": self.params.gbp, "learning": self.params.learning,
                "direct_routing": self.params.direct_routing}

    def observe(self) -> metrics.DataPlane:
        """The device's link statistics, read now: the kernel keeps no per-peer counters."""
        try:
            return metrics.DataPlane(devices={self.dev: netlink.link_stats(self.dev)})
        except netlink.NetlinkError:
            return metrics.DataPlane()

    def close(self) -> None:
        # flannel leaves the device, neighbours, FDB entries and routes in place
        # (docs/flannel-compat.md §"Start-up order").
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    # -- MAC persistence --------------------------------------------------------------------------
    def _mac_path(self) -> str:
        return os.path.join(self.params.state_dir, f"vxlan-{self.params.vni}-{self.ext.ext_addr}.mac")

    def _load_mac(self) -> str:
        path = self._mac_path()
        try:
            with open(path) as f:
                mac = f.read().strip().lower()
            if _usable_mac(mac):
                return mac
            log.warning("ignoring bad VTEP MAC %r in %s", mac, path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot read %s: %s", path, e)
        mac = self._existing_device_mac() or random_mac()
        self._save_mac(mac)
        return mac

    def _existing_device_mac(self) -> Optional[str]:
        # A device kept from an earlier run keeps its MAC; announcing that same MAC spares peers
        # a change (a stale FDB entry in flannel,
        # docs/flannel-compat.md §"vxlan per-peer state").
        try:
            info = netlink.link_info(self.dev)
        except netlink.NetlinkError:
            return None
        vx = info["vxlan"]
        if info["kind"] == "vxlan" and vx and vx["id"] == self.params.vni and _usable_mac(info["address"]):
            return info["address"]
        return None

    def _save_mac(self, mac: str) -> None:
        try:
            os.makedirs(self.params.state_dir, mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.params.state_dir, prefix=".vxlan-mac-")
            with os.fdopen(fd, "w") as f:
                f.write(mac + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self._mac_path())
        except OSError as e:
            log.warning("cannot persist the VTEP MAC in %s (%s); a restart will announce a new one",
                        self._mac_path(), e)

    # -- device ----------------------------------------------------------------------------------
    def _incompatible(self, info: dict) -> Optional[str]:
        """Why an existing link cannot be reused (flannel's vxlanLinksIncompat, plus learning)."""
        if info["kind"] != "vxlan" or info["vxlan"] is None:
            return f"kind {info['kind']}"
        v = info["vxlan"]
        want = {"id": self.params.vni, "link": self.ext.index, "local": IPv4Address(str(self.ext.ext_addr)),
                "group": None, "l2miss": False, "port": self.params.port or netlink.VXLAN_DEFAULT_PORT,
                "gbp": self.params.gbp, "learning": self.params.learning}
        diffs = [f"{k} {v.get(k)} != {w}" for k, w in want.items() if v.get(k) != w]
        return ", ".join(diffs) or None

    def _ensure_link(self) -> None:
        try:
            info = netlink.link_info(self.dev)
        except netlink.NetlinkError as e:
            if e.errno != errno.ENODEV:
                raise BackendError(f"vxlan: {e}") from None
            info = None
        if info is not None:
            why = self._incompatible(info)
            if why is None:
                return
            log.warning("%s already exists with incompatible configuration: %s; recreating device", self.dev, why)
            netlink.link_delete(self.dev)
        netlink.vxlan_create(self.dev, self.params.vni, self.ext.ext_addr, self.ext.index, self.params.port,
                             self.params.learning, self.params.gbp, self.mac, self.mtu())

    def _configure_device(self, lease: Lease, network: IPv4Network) -> None:
        try:
            self._ensure_link()
            info = netlink.link_info(self.dev)
            if info["mtu"] != self.mtu():
                netlink.link_set_mtu(self.dev, self.mtu())
            if info["address"] != self.mac:
                netlink.link_set_address(self.dev, self.mac)
            netlink.ensure_single_address(self.dev, lease.subnet.network_address, 32, network)
            netlink.link_set_up(self.dev)
            self._ifindex = netlink.link_index(self.dev) or 0
            # flannel #1795: something (udev's MACAddressPolicy) may rewrite the MAC; verify it.
            got = netlink.link_info(self.dev)["address"]
            if got != self.mac:
                netlink.link_set_address(self.dev, self.mac)
                got = netlink.link_info(self.dev)["address"]
                if got != self.mac:
                    raise BackendError(f"vxlan: {self.dev} has MAC {got}, wanted {self.mac}")
        except netlink.NetlinkError as e:
            raise BackendError(f"vxlan: failed to set up {self.dev}: {e}") from None

    # -- peers -----------------------------------------------------------------------------------
    def _peer_attrs(self, lease: Lease) -> Optional[LeaseAttrs]:
        """The attrs of a vxlan peer we program, None for our own lease, other backends and
        subnets outside Network (the daemon's admission refuses those first)."""
        attrs = lease.attrs
        if attrs is None:
            return None
        if self.lease is not None and lease.subnet == self.lease.subnet:
            return None
        if attrs.backend_type != "vxlan":
            log.info("ignoring non-vxlan v4 subnet(%s): type=%s", lease.subnet, attrs.backend_type)
            return None
        why = network_problem(lease.subnet, self.network) if self.network is not None else None
        if why is not None:
            log.warning("vxlan: refusing lease %s: it %s", lease.subnet, why)
            return None
        return attrs

    def _direct(self, public_ip: IPv4Address) -> bool:
        """DirectRouting and `ip route get PublicIP` shows no gateway: the peer is on our link."""
        if not self.params.direct_routing:
            return False
        try:
            _oif, gw, _src = netlink.route_get(public_ip)
        except netlink.NetlinkError as e:
            log.warning("route get %s failed (%s); using the overlay", public_ip, e)
            return False
        return gw is None

    def _add(self, lease: Lease, pending: Optional[List[_Peer]] = None) -> None:
        """Program one peer now, or with `pending` leave it there for one batch (_program_many)."""
        attrs = self._peer_attrs(lease)
        if attrs is None:
            if lease.subnet in self.peers and lease.attrs is not None:
                self._remove(self.peers[lease.subnet].lease)     # the peer switched backends
            return
        direct = self._direct(attrs.public_ip)
        mac = None if direct else vtep_mac(attrs)
        if not direct and mac is None:
            log.error("ignoring vxlan lease %s: bad VtepMAC in %s", lease.subnet, attrs.backend_data)
            return
        old = self.peers.get(lease.subnet)
        if old is not None and old.ok and old.lease.attrs == attrs and old.direct == direct:
            return                                       # unchanged (a re-list): nothing to do
        if old is not None:
            self._drop_stale(old, mac, direct, attrs.public_ip)
        peer = _Peer(lease, attrs.public_ip, mac, direct)
        self._keep(peer)
        if pending is not None:
            pending.append(peer)
        else:
            peer.ok = self._program(peer)

    def _drop_stale(self, old: _Peer, mac: Optional[str], direct: bool, public_ip: IPv4Address) -> None:
        if old.direct != direct:
            self._unprogram(old)
        elif old.mac and old.mac != mac:
            # The peer came back with a new MAC: its old FDB entry would otherwise stay forever.
            self._delete(self._fdb_steps(old))
        elif direct and old.public_ip != public_ip:
            sn = old.lease.subnet
            self._delete([(f"delete route {sn}", lambda: rtnl.route_delete(
                sn.network_address, sn.prefixlen, old.public_ip))])

    def _remove(self, lease: Lease) -> None:
        p = self._forget(lease.subnet)
        if p is None:
            if lease.attrs is None or lease.attrs.backend_type != "vxlan" or self._peer_attrs(lease) is None:
                return
            # Never seen (e.g. removed before we started): clean up what its attrs describe.
            p = _Peer(lease, lease.attrs.public_ip, vtep_mac(lease.attrs), False)
            if self.params.direct_routing:
                self._unprogram(_Peer(lease, lease.attrs.public_ip, None, True))
        log.info("removing vxlan peer %s (%s)", lease.subnet, lease.attrs.public_ip if lease.attrs else "?")
        self._unprogram(p)

    @staticmethod
    def _isolated(what: str, fn, *args) -> None:
        """One peer's work; whatever it raises is logged, and the next peer is done."""
        try:
            fn(*args)
        except Exception as e:
            log.error("vxlan: %s failed: %s: %s", what, type(e).__name__, e)

    # -- repair from kernel notifications (agent/kernelwatch.py) ---------------------------------
    def _start_watch(self) -> None:
        if self._watch is not None:
            return
        try:
            self._watch = netlink.kernel_watch(self._on_kernel)
        except netlink.NetlinkError as e:
            log.warning("vxlan: no kernel notifications (%s); check() compares every peer each tick", e)

    def _poll_watch(self) -> Optional[Changes]:
        """What the kernel reported since the last tick; None: no notifications, compare all."""
        if self._watch is None:
            self._start_watch()
            return None
        try:
            return self._watch.poll(0)
        except OSError as e:
            log.warning("vxlan: kernel notifications failed (%s); resyncing", e)
            self._watch.close()
            self._watch = None
            return None
