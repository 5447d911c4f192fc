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
the rest of that peer's clean-up.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Set, Tuple

from .. import netlink, rtnl
from ..config import NetworkConfig
from ..errors import BackendError
from ..iface import ExternalInterface
from ..lease import Lease, LeaseAttrs, valid_peer_mac, vtep_mac
from ..peers import network_problem
from .base import BackendOptions

if TYPE_CHECKING:
    from ..kernelwatch import Changes, KernelWatch

log = logging.getLogger("fastflannel.vxlan")

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
ENCAP_OVERHEAD = 50          # bytes: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
DEFAULT_VNI = 1
STEP_ATTEMPTS = 3            # flannel retries each step (10x with retry-go); a few is plenty here
STEP_RETRY_S = 0.05
Step = Tuple[str, Callable[[], bytes]]      # what (for the log), how to build its request


def _int_opt(cfg: NetworkConfig, key: str, default: int, lo: int, hi: int) -> int:
    v = cfg.backend_option(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or not lo <= int(v) <= hi:
        raise BackendError(f"vxlan backend: bad {key} {v!r} (want an integer in {lo}..{hi})")
    return int(v)


def random_mac() -> str:
    """A random locally administered unicast MAC (flannel v0.15.1+ RandomHardwareAddr)."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _usable_mac(mac: Optional[str]) -> bool:
    """Our own VTEP MAC: a unicast MAC that is locally administered (flannel v0.15.1+)."""
    return valid_peer_mac(mac) and bool(int(str(mac)[:2], 16) & 0x02)


def _unindex(index: dict, key: object, subnet: IPv4Network) -> None:
    users = index.get(key)
    if users is not None:
        users.discard(subnet)
        if not users:
            del index[key]


@dataclass
class _Peer:
    lease: Lease
    public_ip: IPv4Address       # the lease's PublicIP (FDB dst, or the direct route's gateway)
    mac: Optional[str]           # None for a direct-routed peer
    direct: bool
    ok: bool = False             # False: programming failed, check() retries


class VxlanBackend:
    name = "vxlan"

    def __init__(self, ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions):
        self.ext = ext
        self.vni = _int_opt(cfg, "VNI", DEFAULT_VNI, 0, (1 << 24) - 1)
        self.port = _int_opt(cfg, "Port", 0, 0, 65535)
        self.mtu_opt = _int_opt(cfg, "MTU", 0, 0, 65535)
        self.gbp = bool(cfg.backend_option("GBP", False))
        self.learning = bool(cfg.backend_option("Learning", False))
        self.direct_routing = bool(cfg.backend_option("DirectRouting", False))
        self.dev = f"flannel.{self.vni}"
        self.state_dir = opts.state_dir
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
        return (self.mtu_opt or self.ext.mtu) - ENCAP_OVERHEAD

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext.ext_addr, "vxlan", {"VNI": self.vni, "VtepMAC": self.mac})

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
            old, mac = self.mac, random_mac()
            while mac == old:
                mac = random_mac()
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

    def close(self) -> None:
        # flannel leaves the device, neighbours, FDB entries and routes in place
        # (docs/flannel-compat.md §"Start-up order").
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    # -- MAC persistence --------------------------------------------------------------------------
    def _mac_path(self) -> str:
        return os.path.join(self.state_dir, f"vxlan-{self.vni}-{self.ext.ext_addr}.mac")

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
        if info["kind"] == "vxlan" and vx and vx["id"] == self.vni and _usable_mac(info["address"]):
            return info["address"]
        return None

    def _save_mac(self, mac: str) -> None:
        try:
            os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".vxlan-mac-")
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
        want = {"id": self.vni, "link": self.ext.index, "local": IPv4Address(str(self.ext.ext_addr)),
                "group": None, "l2miss": False, "port": self.port or netlink.VXLAN_DEFAULT_PORT,
                "gbp": self.gbp, "learning": self.learning}
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
        netlink.vxlan_create(self.dev, self.vni, self.ext.ext_addr, self.ext.index, self.port,
                             self.learning, self.gbp, self.mac, self.mtu())

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
        if not self.direct_routing:
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

    # -- who uses which kernel object (O(1) per event, however many peers) ------------------------
    def _keep(self, p: _Peer) -> None:
        """`p` is now the peer of its subnet: self.peers and the sharing indexes follow."""
        self._forget(p.lease.subnet)
        self.peers[p.lease.subnet] = p
        if not p.direct:
            self._by_vtep.setdefault(int(p.lease.subnet.network_address), set()).add(p.lease.subnet)
            if p.mac:
                self._by_fdb.setdefault((p.mac, int(p.public_ip)), set()).add(p.lease.subnet)

    def _forget(self, subnet: IPv4Network) -> Optional[_Peer]:
        p = self.peers.pop(subnet, None)
        if p is not None and not p.direct:
            _unindex(self._by_vtep, int(subnet.network_address), subnet)
            if p.mac:
                _unindex(self._by_fdb, (p.mac, int(p.public_ip)), subnet)
        return p

    def _neigh_shared(self, p: _Peer) -> bool:
        """Another peer's VTEP has p's address (a lease of another prefix length at the same IP)."""
        return bool(self._by_vtep.get(int(p.lease.subnet.network_address), set()) - {p.lease.subnet})

    def _fdb_shared(self, p: _Peer) -> bool:
        """Another peer uses p's FDB entry (a copied lease: same MAC, same host)."""
        return bool(self._by_fdb.get((p.mac or "", int(p.public_ip)), set()) - {p.lease.subnet})

    # -- requests --------------------------------------------------------------------------------
    def _msgs(self, p: _Peer) -> List[bytes]:
        """The peer's objects in flannel's order, route last: neighbour, FDB entry, route."""
        sn, pub, idx = p.lease.subnet, p.public_ip, self._ifindex
        if p.direct:
            return [rtnl.route_replace(sn.network_address, sn.prefixlen, pub, self.ext.index)]
        assert p.mac is not None
        vtep = sn.network_address
        return [rtnl.neigh_replace(vtep, p.mac, idx), rtnl.fdb_replace(p.mac, idx, pub),
                rtnl.route_replace(vtep, sn.prefixlen, vtep, idx, onlink=True)]

    def _program(self, p: _Peer) -> bool:
        """All objects of one peer in one request batch, retried a few times; on failure what
        was added is removed again (no route without its neighbour and FDB entry), but what
        other peers share."""
        err = "no device"
        for attempt in range(STEP_ATTEMPTS):
            try:
                failed = netlink.send_batch(self._msgs(p))
            except netlink.NetlinkError as e:
                failed, err = [(0, e.errno or 0)], str(e)
            except Exception as e:  # not the kernel's refusal: a bug or bad data; no retry
                err = f"{type(e).__name__}: {e}"
                break
            if not failed:
                log.info("vxlan peer %s: %s at %s", p.lease.subnet, p.mac or "direct", p.public_ip)
                return True
            err = "; ".join(os.strerror(code) for _i, code in failed)
            if attempt < STEP_ATTEMPTS - 1:
                time.sleep(STEP_RETRY_S)
        log.error("vxlan: programming peer %s (%s at %s) failed: %s", p.lease.subnet, p.mac, p.public_ip, err)
        self._unprogram(p)
        return False

    def _program_many(self, peers: List[_Peer]) -> None:
        """Every peer's objects in one batch; a peer with a refused request goes the slow way,
        one whose requests cannot be built (a bug, bad data) is left for check() and never
        stops the others."""
        msgs: List[bytes] = []
        owner: List[_Peer] = []
        broken = set()
        for p in peers:
            try:
                m = self._msgs(p)
            except Exception as e:
                log.error("vxlan: peer %s: %s: %s", p.lease.subnet, type(e).__name__, e)
                broken.add(p.lease.subnet)
                continue
            msgs += m
            owner += [p] * len(m)
        try:
            failed = {owner[i].lease.subnet for i, _code in netlink.send_batch(msgs)}
        except Exception as e:  # NetlinkError, or a bug: every peer the slow way
            log.error("vxlan: %s", e)
            failed = {p.lease.subnet for p in owner}
        for p in peers:
            if p.lease.subnet in broken:
                p.ok = False
                self._unprogram(p)
            else:
                p.ok = p.lease.subnet not in failed or self._program(p)

    def _fdb_steps(self, p: _Peer) -> List[Step]:
        if not p.mac or self._fdb_shared(p):
            return []
        mac, idx, pub = p.mac, self._ifindex, p.public_ip
        return [(f"delete FDB {mac} dst {pub}", lambda: rtnl.fdb_delete(mac, idx, pub))]

    def _unprogram_steps(self, p: _Peer) -> List[Step]:
        sn, idx, net = p.lease.subnet, self._ifindex, p.lease.subnet.network_address
        if p.direct:
            return [(f"delete route {sn} via {p.public_ip}",
                     lambda: rtnl.route_delete(net, sn.prefixlen, p.public_ip))]
        steps: List[Step] = []
        if not self._neigh_shared(p):
            steps.append((f"delete neighbour {net}", lambda: rtnl.neigh_delete(net, idx)))
        steps += self._fdb_steps(p)
        return steps + [(f"delete route {sn}", lambda: rtnl.route_delete(net, sn.prefixlen, None, idx))]

    def _unprogram(self, p: _Peer) -> None:
        """Delete p's kernel state but what other peers still use, in one batch; every step
        runs, whatever another one raises."""
        if not self._ifindex and not p.direct:
            return
        self._delete(self._unprogram_steps(p))

    def _delete(self, steps: List[Step]) -> None:
        """Deletions: each request built on its own (one that raises is logged and skipped), then
        one batch; what the kernel no longer holds is fine."""
        msgs = []
        for what, build in steps:
            try:
                msgs.append(build())
            except Exception as e:  # a clean-up step must never skip the next ones
                log.warning("vxlan: %s failed unexpectedly: %s: %s", what, type(e).__name__, e)
        try:
            for _i, code in netlink.send_batch(msgs):
                log.debug("ignored: a deletion failed: %s", os.strerror(code))
        except Exception as e:
            log.warning("vxlan: deleting kernel state: %s", e)

    def _remove(self, lease: Lease) -> None:
        p = self._forget(lease.subnet)
        if p is None:
            if lease.attrs is None or lease.attrs.backend_type != "vxlan" or self._peer_attrs(lease) is None:
                return
            # Never seen (e.g. removed before we started): clean up what its attrs describe.
            p = _Peer(lease, lease.attrs.public_ip, vtep_mac(lease.attrs), False)
            if self.direct_routing:
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

    # -- reconciliation --------------------------------------------------------------------------
    def _prune(self, wanted: Dict[IPv4Network, Lease]) -> None:
        """Remove kernel state on flannel.<VNI> (and direct routes) that belongs to no live lease:
        kernel-filtered dumps of the device, one batch of deletions."""
        if self.network is None or not self._ifindex or not netlink.link_exists(self.dev):
            return
        net, idx = self.network, self._ifindex
        vteps = {int(sn.network_address) for sn in wanted}
        macs = {p.mac for p in self.peers.values() if p.mac}
        msgs: List[bytes] = []
        try:
            devs = [idx] + ([self.ext.index] if self.direct_routing else [])
            for oif in devs:
                for r in netlink.dump_routes(oif):
                    dst = IPv4Network((r.dst, r.plen))
                    if (r.gateway and dst.subnet_of(net) and dst != net and dst not in wanted
                            and (self.lease is None or dst != self.lease.subnet)):
                        log.info("pruning stale route %s via %s dev #%d", dst, IPv4Address(r.gateway), oif)
                        msgs.append(rtnl.route_delete(r.dst, r.plen, r.gateway, oif))
            for n in netlink.dump_neighbours(idx):
                if (n.state & netlink.NUD_PERMANENT and n.dst is not None and IPv4Address(n.dst) in net
                        and n.dst not in vteps):
                    log.info("pruning stale neighbour %s lladdr %s dev %s", IPv4Address(n.dst), n.mac, self.dev)
                    msgs.append(rtnl.neigh_delete(n.dst, idx))
            for e in netlink.dump_neighbours(idx, fdb=True):
                if e.dst is not None and e.mac and e.mac != "00:00:00:00:00:00" and e.mac not in macs:
                    log.info("pruning stale FDB entry %s dst %s dev %s", e.mac, IPv4Address(e.dst), self.dev)
                    msgs.append(rtnl.fdb_delete(e.mac, idx, e.dst))
            netlink.send_batch(msgs)
        except netlink.NetlinkError as e:
            log.warning("vxlan: pruning stale state: %s", e)

    def _intact(self, p: _Peer, routes: set, neigh: set, fdb: set) -> bool:
        sn, pub = p.lease.subnet, int(p.public_ip)
        vtep = int(sn.network_address)
        if p.direct:
            return (vtep, sn.prefixlen, pub) in routes
        return (vtep, sn.prefixlen, vtep) in routes and (vtep, p.mac) in neigh and (p.mac, pub) in fdb

    def _repair_peers(self) -> None:
        """Re-program peers that failed or lost their neighbour, FDB entry or route: one filtered
        dump per object type, one batch."""
        try:
            routes = {(r.dst, r.plen, r.gateway) for oif in {self._ifindex, self.ext.index}
                      for r in netlink.dump_routes(oif)}
            neigh = {(n.dst, n.mac) for n in netlink.dump_neighbours(self._ifindex)}
            fdb = {(e.mac, e.dst) for e in netlink.dump_neighbours(self._ifindex, fdb=True)}
        except netlink.NetlinkError as e:
            log.warning("vxlan: cannot read kernel state: %s", e)
            return
        broken = [p for p in self.peers.values() if not (p.ok and self._intact(p, routes, neigh, fdb))]
        for p in broken:
            if p.ok:
                log.warning("vxlan peer %s lost kernel state; re-programming it", p.lease.subnet)
        self._program_many(broken)

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

    def _repair_reported(self, changes: Changes) -> None:
        """Re-program the peers one of whose objects was deleted (looked up in the sharing
        indexes: O(1) per notification); our own deletions (peers we removed, an old MAC's FDB
        entry) name no current peer's object and are ignored."""
        idx = self._ifindex
        hit: Set[IPv4Network] = set()
        for r in changes.routes:
            p = self.peers.get(IPv4Network((r.dst, r.plen))) if r.table == rtnl.RT_TABLE_MAIN and r.plen else None
            if p is not None and r.gateway == (int(p.public_ip) if p.direct else r.dst):
                hit.add(p.lease.subnet)
        for n in changes.neighbours:
            if n.ifindex != idx or n.dst is None:
                continue
            if n.family == rtnl.AF_INET:
                hit |= self._by_vtep.get(n.dst, set())
            elif n.mac:
                hit |= self._by_fdb.get((n.mac, n.dst), set())
        for sn in hit:
            log.warning("vxlan peer %s lost kernel state; re-programming it", sn)
        self._program_many([p for sn, p in self.peers.items() if sn in hit or not p.ok])
