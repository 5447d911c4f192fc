"""The fastflannel daemon: one lifecycle, one cancellation root (`Daemon.stop`).

Start-up follows flanneld (FLANNEL.md §3.4): config (retrying every second), interface, backend,
lease, ip-masq and forward rules, subnet.env, ready; then the peer watch, the lease keeper and a
10 s repair tick run until SIGTERM/SIGINT or a lost lease. On exit the lease stays in etcd and
kernel state stays in place, as flannel leaves them (the udp TUN goes away with its fd).
"""
from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from typing import Dict, Optional

from . import errors
from .backends.base import BackendError
from .config import ConfigError, NetworkConfig, parse_config
from .lease import Lease, LeaseEvent
from .peers import PeerTracker
from .subnetfile import parse_cidr, read_prev_subnet, read_subnet_env, write_subnet_file
from .subnets import LeaseKeeper, SubnetManager

log = logging.getLogger("fastflannel")

CONFIG_RETRY_S = 1.0         # flannel's getConfig retry period
CHECK_PERIOD_S = 10.0        # flannel's route check period (host-gw/vxlan repair)
DEFAULT_STATE_DIR = "/var/lib/fastflannel"


def make_backend(cfg: NetworkConfig, ext, opts):
    kind = cfg.backend_type
    if kind == "udp":
        from .backends.udp import UdpBackend
        return UdpBackend(ext, cfg.backend, batch=opts.fastpath_batch, anti_spoof=opts.udp_anti_spoof,
                          workers=opts.fastpath_workers, offload=opts.fastpath_offload,
                          disable=opts.fastpath_disable)
    if kind == "vxlan":
        from .backends.vxlan import VxlanBackend
        return VxlanBackend(ext, cfg.backend, state_dir=_state_dir(opts))
    if kind == "host-gw":
        from .backends.hostgw import HostGwBackend
        return HostGwBackend(ext, cfg.backend)
    raise DaemonError(f"unknown backend type: {kind}")


def _state_dir(opts) -> str:
    return getattr(opts, "state_dir", None) or os.environ.get("FASTFLANNEL_STATE_DIR") or DEFAULT_STATE_DIR


def etcd_options(opts):
    from .registry import EtcdOptions
    return EtcdOptions(endpoints=list(opts.etcd_endpoints), prefix=opts.etcd_prefix,
                       keyfile=opts.etcd_keyfile or None, certfile=opts.etcd_certfile or None,
                       cafile=opts.etcd_cafile or None, username=opts.etcd_username or None,
                       password=opts.etcd_password or None)


class Daemon:
    def __init__(self, opts, registry=None):
        self.opts = opts
        self.stop = threading.Event()
        self.ready = False
        self.fatal: Optional[BaseException] = None
        self.registry = registry
        self.backend = None
        self.lease: Optional[Lease] = None
        self.keeper: Optional[LeaseKeeper] = None
        self.tracker: Optional[PeerTracker] = None
        self.health = None
        self.masq = None
        self.fwd_rules = None
        self.timings: Dict[str, float] = {}
        self._threads = []
        self._t0 = time.monotonic()

    # -- start-up -------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self._start()
            self._loop()
        finally:
            self._shutdown()
        if self.fatal is not None:
            raise self.fatal
        return 0

    def _mark(self, what: str) -> None:
        self.timings[what] = time.monotonic() - self._t0
        log.debug("%s after %.3f s", what, self.timings[what])

    def _start(self) -> None:
        opts = self.opts
        prev = read_prev_subnet(opts.subnet_file)
        if opts.healthz_port:
            from .healthz import HealthServer
            self.health = HealthServer(opts.healthz_ip, opts.healthz_port, lambda: self.ready, self._stats)
            self.health.start()
        self._connect()
        cfg = self._get_config()
        if cfg is None:
            return
        from .iface import choose_external_interface
        ext = choose_external_interface(list(opts.iface), list(opts.iface_regex), opts.public_ip or None,
                                        opts.iface_can_reach or None)
        log.info("Using interface with name %s and address %s (public %s, mtu %d)",
                 ext.name, ext.iface_addr, ext.ext_addr, ext.mtu)
        self.backend = make_backend(cfg, ext, opts)
        mgr = SubnetManager(self.registry, cfg, ext.ext_addr, prev,
                            renew_margin_s=opts.subnet_lease_renew_margin * 60)
        self.lease = mgr.acquire(self.backend.lease_attrs())
        log.info("Acquired lease %s (public %s)", self.lease.subnet, ext.ext_addr)
        self._mark("lease")
        self.backend.setup(self.lease, cfg)
        self._setup_rules(cfg)
        write_subnet_file(opts.subnet_file, cfg.network, self.lease.subnet, self.backend.mtu(), opts.ip_masq)
        self.ready = True
        self._mark("subnet_file")
        log.info("Wrote %s; running backend %s", opts.subnet_file, cfg.backend_type)
        self.keeper = LeaseKeeper(mgr, self.lease)
        self.tracker = PeerTracker(self.lease.subnet)
        leases, rev = self.registry.list_leases()
        self.tracker.reset(leases)
        # The full set, so state for peers that vanished while we were down is removed (flannel
        # leaves it behind, FLANNEL.md §1.7).
        self.backend.sync_peers(self.tracker.leases())
        self._mark("peers")
        self._spawn("lease-watch", self._watch, rev)
        self._spawn("lease-keeper", self.keeper.run, self.stop)

    def _stats(self) -> dict:
        stats = getattr(self.backend, "stats", None)
        return stats() if stats else {}

    def _connect(self) -> None:
        from .registry import EtcdRegistry
        if self.registry is None:
            self.registry = EtcdRegistry(etcd_options(self.opts))
        warned = False
        while not self.stop.is_set():
            try:
                self.registry.connect()
                return
            except errors.EtcdUnreachable as e:
                if not warned:
                    log.error("%s (retrying every %ds)", e, CONFIG_RETRY_S)
                    warned = True
                self.stop.wait(CONFIG_RETRY_S)

    def _get_config(self) -> Optional[NetworkConfig]:
        key = self.opts.etcd_prefix.rstrip("/") + "/config"
        hinted = False
        while not self.stop.is_set():
            try:
                raw = self.registry.get_network_config()
            except errors.RegistryError as e:
                log.error("Couldn't fetch network config: %s", e)
                raw = None
            if raw is not None:
                try:
                    cfg = parse_config(raw)
                except ConfigError as e:
                    raise DaemonError(f"bad network config at {key}: {e}") from None
                log.info("Network config: %s", raw.strip() if isinstance(raw, str) else raw)
                return cfg
            if not hinted:
                log.error("Couldn't fetch network config: flannel config not found in etcd store "
                          "(%s). Did you create your config using etcdv3 API?", key)
                v2 = self._config_in_v2()
                if v2 is not None:
                    log.error("The config exists only in the etcd v2 store (written with the old "
                              "`etcdctl set`). Write it with the v3 API: ETCDCTL_API=3 etcdctl put %s %s",
                              key, shlex.quote(v2.strip()))
                hinted = True
            self.stop.wait(CONFIG_RETRY_S)
        return None

    def _config_in_v2(self) -> Optional[str]:
        try:
            return self.registry.config_from_v2_store()
        except Exception:  # best effort hint only
            return None

    def _setup_rules(self, cfg: NetworkConfig) -> None:
        from .ipmasq import ForwardRules, IPMasq, remove_old_masq_rules
        if self.opts.ip_masq:
            self._remove_stale_masq(cfg, remove_old_masq_rules)
            self.masq = IPMasq(cfg.network, self.lease.subnet,
                               random_fully=not self.opts.ip_masq_fully_random_disable)
            self.masq.ensure_rules()
        if self.opts.iptables_forward_rules:
            self.fwd_rules = ForwardRules(cfg.network)
            self.fwd_rules.ensure_rules()

    def _remove_stale_masq(self, cfg: NetworkConfig, remove) -> None:
        """flannel deletes the masq rules built from the previous subnet.env when its values changed."""
        old = read_subnet_env(self.opts.subnet_file)
        try:
            old_net = parse_cidr(old["FLANNEL_NETWORK"])
            old_sub = parse_cidr(old["FLANNEL_SUBNET"])
        except (KeyError, ValueError):
            return
        if (old_net, old_sub) != (cfg.network, self.lease.subnet):
            log.info("Removing masquerade rules of the previous network %s / subnet %s", old_net, old_sub)
            self._guarded(lambda: remove(old_net, old_sub), "removing old masquerade rules")

    # -- running --------------------------------------------------------------------------------
    def _spawn(self, name: str, fn, *args) -> None:
        def wrapper():
            try:
                fn(*args)
            except BaseException as e:  # any fatal error in a worker ends the daemon
                if not self.stop.is_set():
                    self.fatal = e
                    self.stop.set()
        t = threading.Thread(target=wrapper, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _watch(self, rev: int) -> None:
        own = self.lease.subnet
        for batch in self.registry.watch_leases(rev, self.stop):
            if batch.snapshot is not None:
                mine = [l for l in batch.snapshot if l.subnet == own]
                self.keeper.on_event(LeaseEvent(LeaseEvent.ADDED, mine[0]) if mine else
                                     LeaseEvent(LeaseEvent.REMOVED, Lease(own, None)))
                self.tracker.reset(batch.snapshot)
                self._guarded(lambda: self.backend.sync_peers(self.tracker.leases()), "peer sync")
            others = []
            for ev in batch.events:
                if ev.lease.subnet == own:
                    self.keeper.on_event(ev)
                else:
                    others.append(ev)
            for ev in self.tracker.apply(others):
                # One peer that cannot be programmed must not take the others down; the backend's
                # periodic check() retries it.
                fn = self.backend.add_peer if ev.kind == LeaseEvent.ADDED else self.backend.remove_peer
                self._guarded(lambda: fn(ev.lease), f"{ev.kind} peer {ev.lease.subnet}")
            if others:
                self._mark("last_peer_event")

    def _loop(self) -> None:
        if self.lease is None:
            return
        resync = max(1, int(self.opts.iptables_resync))
        next_check = time.monotonic() + CHECK_PERIOD_S
        next_rules = time.monotonic() + resync
        while not self.stop.wait(0.5):
            now = time.monotonic()
            if now >= next_check:
                next_check = now + CHECK_PERIOD_S
                self._guarded(self.backend.check, "backend check")
            if now >= next_rules:
                next_rules = now + resync
                for rules in (self.masq, self.fwd_rules):
                    if rules is not None:
                        self._guarded(rules.ensure_rules, "iptables resync")

    def _guarded(self, fn, what: str) -> None:
        try:
            fn()
        except Exception as e:  # repair loops log and try again next tick
            log.warning("%s failed: %s", what, e)

    # -- shutdown -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        if self.backend is not None:
            self._guarded(self.backend.close, "backend close")
        if self.registry is not None:
            self._guarded(self.registry.close, "etcd close")
        if self.health is not None:
            self.health.close()
