"""The fastflannel daemon: one lifecycle, one cancellation root (`Daemon.stop`).

Start-up follows flanneld (docs/flannel-compat.md §"Start-up order"): config (retrying every
second), interface, backend, lease, ip-masq and forward rules, subnet.env, ready; then the peer
watch, the lease keeper and a 10 s repair tick run until SIGTERM/SIGINT or a lost lease. On exit
the lease stays in etcd and kernel state stays in place, as flannel leaves them (the udp TUN goes
away with its fd). See docs/architecture.md §"Lifecycle".
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shlex
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from . import metrics, sdnotify
from .backends import new_backend
from .backends.base import DEFAULT_STATE_DIR, Backend, BackendOptions
from .config import NetworkConfig, parse_config, stack_problem
from .errors import ConfigError, DaemonError, EtcdUnreachable, RegistryError
from .flags import Options
from .lease import Lease, LeaseEvent, vtep_mac, vtep_mac6
from .peers import PeerTracker
from .registry_api import Registry
from .subnetfile import parse_cidr, read_prev_ipv6_subnet, read_prev_subnet, read_subnet_env, write_subnet_file
from .subnets import LeaseKeeper, SubnetManager

if TYPE_CHECKING:
    from .etcd_options import EtcdOptions
    from .healthz import HealthServer, StatusSocket
    from .iface import ExternalInterface
    from .ipmasq import ForwardRules, IPMasq

log = logging.getLogger("fastflannel")

CONFIG_RETRY_S = 1.0         # flannel's getConfig retry period
CHECK_PERIOD_S = 10.0        # flannel's route check period (host-gw/vxlan repair)
HEARTBEAT_STALE_S = 10.0     # main loop ticks every 0.5 s; no tick for this long = stuck (watchdog stops)


def backend_options(opts: Options) -> BackendOptions:
    """The flags a backend may use. FASTFLANNEL_STATE_DIR moves the state dir (the lab gives each
    namespace host its own)."""
    return BackendOptions(state_dir=os.environ.get("FASTFLANNEL_STATE_DIR") or DEFAULT_STATE_DIR,
                          batch=opts.fastpath_batch, workers=opts.fastpath_workers,
                          duplex=opts.fastpath_duplex,
                          offload=opts.fastpath_offload, disable=tuple(opts.fastpath_disable),
                          anti_spoof=opts.udp_anti_spoof)


def etcd_options(opts: Options) -> EtcdOptions:
    from .etcd_options import EtcdOptions  # not .registry: a daemon on the v2 store never loads grpc
    return EtcdOptions(endpoints=list(opts.etcd_endpoints), prefix=opts.etcd_prefix,
                       keyfile=opts.etcd_keyfile or None, certfile=opts.etcd_certfile or None,
                       cafile=opts.etcd_cafile or None, username=opts.etcd_username or None,
                       password=opts.etcd_password or None)


@dataclass
class _Running:
    """What start-up built; the watch, the lease keeper and the repair loop work on it."""
    backend: Backend
    lease: Lease
    keeper: LeaseKeeper
    tracker: PeerTracker


class Daemon:
    def __init__(self, opts: Options, registry: Optional[Registry] = None):
        self.opts = opts
        self.stop = threading.Event()
        self.ready = False
        self.fatal: Optional[BaseException] = None
        self.registry = registry
        self.backend: Optional[Backend] = None      # set as soon as it exists, so shutdown closes it
        self.running: Optional[_Running] = None
        self.health: Optional[HealthServer] = None
        self.status_socket: Optional[StatusSocket] = None    # `fastflannel status` (agent/status.py)
        self.started = time.time()
        self.masq: Optional[IPMasq] = None
        self.fwd_rules: Optional[ForwardRules] = None
        self.masq6: Optional[IPMasq] = None         # the IPv6 sets (EnableIPv6)
        self.fwd_rules6: Optional[ForwardRules] = None
        self.timings: Dict[str, float] = {}
        self._threads: List[threading.Thread] = []
        self._t0 = time.monotonic()
        # systemd (agent/sdnotify.py): READY=1 once serving, STOPPING=1, watchdog pings while healthy
        self.systemd = sdnotify.Notifier.from_env()
        self.watchdog = sdnotify.Watchdog(self.systemd, self.healthy, self.stop)
        self._heartbeat = time.monotonic()

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
        prev6 = read_prev_ipv6_subnet(opts.subnet_file)
        self._start_endpoints()
        registry = self._connect()
        cfg = self._get_config(registry)
        if cfg is None:
            return
        ext = self._interface(cfg)
        backend = self.backend = new_backend(ext, cfg, backend_options(opts))
        mgr = SubnetManager(registry, cfg, ext.ext_addr, prev, renew_margin_s=opts.subnet_lease_renew_margin * 60,
                            prev_ipv6_subnet=prev6, public_ipv6=ext.ext_v6_addr)
        lease = mgr.acquire(backend.lease_attrs())
        log.info("Acquired lease %s (public %s)", lease.key, mgr.host)
        self._mark("lease")
        backend.setup(lease, cfg)
        self._setup_rules(cfg, lease)
        ipv6 = (cfg.ipv6_network, lease.ipv6_subnet) if cfg.ipv6_network and lease.ipv6_subnet else None
        v4 = not cfg.ipv6_only                   # IPv6-only: no IPv4 lines, as flannel
        write_subnet_file(opts.subnet_file, cfg.network if v4 else None, lease.subnet if v4 else None,
                          backend.mtu(), opts.ip_masq, ipv6)
        self.ready = True
        self._mark("subnet_file")
        log.info("Wrote %s; running backend %s", opts.subnet_file, cfg.backend_type)
        tracker = PeerTracker(lease.slot, lease.attrs, cfg, lease.ipv6_subnet)   # admission (agent/peers.py)
        self._run_peers(registry, _Running(backend, lease, LeaseKeeper(mgr, lease), tracker))

    def _interface(self, cfg: NetworkConfig) -> ExternalInterface:
        """The external interface as flanneld picks it for the config's IP families."""
        opts = self.opts
        from .iface import choose_external_interface
        ext = choose_external_interface(list(opts.iface), list(opts.iface_regex), opts.public_ip or None,
                                        opts.iface_can_reach or None, opts.public_ipv6 or None,
                                        ipv6=cfg.enable_ipv6, ipv4=cfg.enable_ipv4)
        if cfg.enable_ipv4:
            log.info("Using interface with name %s and address %s (public %s, mtu %d)",
                     ext.name, ext.iface_addr, ext.ext_addr, ext.mtu)
        if ext.iface_v6_addr is not None:
            log.info("Using interface with name %s and v6 address %s (public %s, mtu %d)",
                     ext.name, ext.iface_v6_addr, ext.ext_v6_addr, ext.mtu)
        return ext

    def _run_peers(self, registry: Registry, run: _Running) -> None:
        """The peers as listed now, then the watch and the lease keeper in their threads."""
        self.running = run
        leases, rev = registry.list_leases()
        run.tracker.reset(leases)
        # The full set, so state for peers that vanished while we were down is removed (flannel
        # leaves it behind, docs/flannel-compat.md §"Watch"); what fails is repaired by check().
        self._guarded(lambda: run.backend.sync_peers(run.tracker.leases()), "peer sync")
        self._resolve_mac_conflicts(run)
        self._mark("peers")
        self._spawn("lease-watch", self._watch, registry, run, rev)
        self._spawn("lease-keeper", run.keeper.run, self.stop)
        self._heartbeat = time.monotonic()
        self.systemd.notify("READY=1")   # as flanneld: subnet.env written, backend running
        self.watchdog.start()

    def _start_endpoints(self) -> None:
        """The health port (-healthz-port) and the status socket beside subnet.env, both serving
        /healthz, /readyz, /stats, /metrics and /status (agent/healthz.py)."""
        from .healthz import DaemonEndpoints, HealthServer, start_status_socket
        from .status import socket_path
        endpoints = DaemonEndpoints(self)
        if self.opts.healthz_port:
            self.health = HealthServer(self.opts.healthz_ip, self.opts.healthz_port, endpoints)
            self.health.start()
        self.status_socket = start_status_socket(socket_path(self.opts.subnet_file), endpoints)

    def _connect(self) -> Registry:
        """The registry, connected (retrying every second while etcd is unreachable) unless
        stop was set first."""
        if self.registry is None:
            # -etcd-api: the v3 store, the v2 store, or (auto) the one holding the config.
            from .store_select import StoreSelector
            self.registry = StoreSelector(etcd_options(self.opts), self.opts.etcd_api)
        registry, warned = self.registry, False
        while not self.stop.is_set():
            try:
                registry.connect()
                break
            except EtcdUnreachable as e:
                if not warned:
                    log.error("%s (retrying every %ds)", e, CONFIG_RETRY_S)
                    warned = True
                self.stop.wait(CONFIG_RETRY_S)
        return registry

    def _get_config(self, registry: Registry) -> Optional[NetworkConfig]:
        key = self.opts.etcd_prefix.rstrip("/") + "/config"
        hinted = False
        while not self.stop.is_set():
            try:
                raw = registry.get_network_config()
            except RegistryError as e:
                log.error("Couldn't fetch network config: %s", e)
                raw = None
            if raw is not None:
                try:
                    cfg = parse_config(raw)
                except ConfigError as e:
                    raise DaemonError(f"bad network config at {key}: {e}") from None
                problem = stack_problem(cfg)
                if problem is not None:
                    raise DaemonError(f"network config at {key}: {problem}")
                log.info("Network config: %s", raw.strip() if isinstance(raw, str) else raw)
                return cfg
            if not hinted:
                for line in self._config_missing(registry, key):
                    log.error("%s", line)
                hinted = True
            self.stop.wait(CONFIG_RETRY_S)
        return None

    def _config_missing(self, registry: Registry, key: str) -> List[str]:
        """What to say, once, while no config is found: flannel's message for the store in use,
        and where the config could be instead (-etcd-api, docs/flannel-compat.md §"The etcd v2 store")."""
        if self.opts.etcd_api == "v2":
            return [f"Couldn't fetch network config: flannel config not found in the etcd v2 store ({key}). "
                    f"Write it as flanneld < v0.18 reads it: ETCDCTL_API=2 etcdctl set {key} '<config JSON>'"]
        lines = [f"Couldn't fetch network config: flannel config not found in etcd store ({key}). "
                 "Did you create your config using etcdv3 API?"]
        if self.opts.etcd_api == "auto":
            lines.append("It is not in the etcd v2 store either, where flanneld v0.6-v0.13 keep it (etcd >= 3.4 "
                         "serves that store only with --enable-v2); the daemon runs on whichever store holds it")
            return lines
        v2 = self._config_in_v2(registry)
        if v2 is not None:
            lines.append("The config exists only in the etcd v2 store (written with `etcdctl set`), which "
                         "-etcd-api=v3 ignores: drop -etcd-api=v3 to run on that store, or write it with the v3 "
                         f"API: ETCDCTL_API=3 etcdctl put {key} {shlex.quote(v2.strip())}")
        return lines

    @staticmethod
    def _config_in_v2(registry: Registry) -> Optional[str]:
        try:
            return registry.config_from_v2_store()
        except Exception:  # best effort hint only
            return None

    def _setup_rules(self, cfg: NetworkConfig, lease: Lease) -> None:
        if cfg.enable_ipv4:
            self._setup_rules4(cfg, lease)
        if cfg.ipv6_network is not None and lease.ipv6_subnet is not None:
            self._setup_rules6(cfg.ipv6_network, lease.ipv6_subnet)

    def _setup_rules4(self, cfg: NetworkConfig, lease: Lease) -> None:
        """flannel's MasqRules and forward rules with iptables (not in an IPv6-only network)."""
        from .ipmasq import ForwardRules, IPMasq, remove_old_masq_rules
        if self.opts.ip_masq:
            self._remove_stale_masq(cfg, lease, remove_old_masq_rules)
            self.masq = IPMasq(cfg.network, lease.subnet,
                               random_fully=not self.opts.ip_masq_fully_random_disable)
            self.masq.ensure_rules()
        if self.opts.iptables_forward_rules:
            self.fwd_rules = ForwardRules(cfg.network)
            self.fwd_rules.ensure_rules()

    def _setup_rules6(self, net6, subnet6) -> None:
        """flannel's MasqIP6Rules and IPv6 forward rules, with ip6tables (docs/flannel-compat.md
        §"Dual-stack"); the ones of a previous IPv6 network/subnet are removed first."""
        from .ipmasq import ForwardRules, IPMasq, remove_old_masq_rules
        from .subnetfile import parse_cidr6
        if self.opts.ip_masq:
            old = read_subnet_env(self.opts.subnet_file)
            try:
                old_net, old_sub = parse_cidr6(old["FLANNEL_IPV6_NETWORK"]), parse_cidr6(old["FLANNEL_IPV6_SUBNET"])
                if (old_net, old_sub) != (net6, subnet6):
                    self._guarded(lambda: remove_old_masq_rules(old_net, old_sub), "removing old IPv6 masquerade rules")
            except (KeyError, ValueError):
                pass
            self.masq6 = IPMasq(net6, subnet6, random_fully=not self.opts.ip_masq_fully_random_disable)
            self.masq6.ensure_rules()
        if self.opts.iptables_forward_rules:
            self.fwd_rules6 = ForwardRules(net6)
            self.fwd_rules6.ensure_rules()

    def _remove_stale_masq(self, cfg: NetworkConfig, lease: Lease, remove: Callable[..., None]) -> None:
        """flannel deletes the masq rules built from the previous subnet.env when its values changed."""
        old = read_subnet_env(self.opts.subnet_file)
        try:
            old_net = parse_cidr(old["FLANNEL_NETWORK"])
            old_sub = parse_cidr(old["FLANNEL_SUBNET"])
        except (KeyError, ValueError):
            return
        if (old_net, old_sub) != (cfg.network, lease.subnet):
            log.info("Removing masquerade rules of the previous network %s / subnet %s", old_net, old_sub)
            self._guarded(lambda: remove(old_net, old_sub), "removing old masquerade rules")

    # -- running --------------------------------------------------------------------------------
    def _spawn(self, name: str, fn: Callable[..., object], *args: Any) -> None:
        def wrapper() -> None:
            try:
                fn(*args)
            except BaseException as e:  # any fatal error in a worker ends the daemon
                if not self.stop.is_set():
                    self.fatal = e
                    self.stop.set()
        t = threading.Thread(target=wrapper, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _watch(self, registry: Registry, run: _Running, rev: int) -> None:
        own = run.lease.slot
        for batch in registry.watch_leases(rev, self.stop):
            t0 = time.monotonic()          # the events' arrival: LEASE_APPLY_SECONDS starts here
            if batch.snapshot is not None:
                snapshot = batch.snapshot
                # our key first: a dual-stack key and an IPv4-only one may share our subnet
                mine = sorted((lease for lease in snapshot if lease.slot == own),
                              key=lambda lease: lease.key != run.lease.key)
                run.keeper.on_event(LeaseEvent(LeaseEvent.ADDED, mine[0]) if mine else
                                    LeaseEvent(LeaseEvent.REMOVED, dataclasses.replace(run.lease, attrs=None)))
                run.tracker.reset(snapshot)
                self._apply("sync", lambda: run.backend.sync_peers(run.tracker.leases()), "peer sync", t0)
            others = []
            for ev in batch.events:
                if ev.lease.slot == own:
                    run.keeper.on_event(ev)
                else:
                    others.append(ev)
            self._dispatch(run, run.tracker.apply(others), t0)
            self._resolve_mac_conflicts(run)
            if others:
                self._mark("last_peer_event")

    def _dispatch(self, run: _Running, events: List[LeaseEvent], t0: float) -> None:
        """Peer events into the backend, each counted and timed from t0 (_apply)."""
        for ev in events:
            # One peer that cannot be programmed must not take the others down; the backend's
            # periodic check() retries it.
            fn = run.backend.add_peer if ev.kind == LeaseEvent.ADDED else run.backend.remove_peer
            self._apply(ev.kind, functools.partial(fn, ev.lease), f"{ev.kind} peer {ev.lease.slot}", t0)

    def _resolve_mac_conflicts(self, run: _Running) -> None:
        """Another host announces our VTEP MAC (a cloned VM, a shared state dir): the kernel
        would never sort it out, so take a new MAC and announce it (docs/architecture.md
        §"Lease admission")."""
        conflicts = run.tracker.take_mac_conflicts()
        replace = getattr(run.backend, "replace_vtep_mac", None)
        if not conflicts or replace is None:
            return
        for lease in conflicts:
            log.error("Host %s (lease %s) announces this host's VTEP MAC %s; taking a new MAC",
                      lease.public_address, lease.key, vtep_mac(lease.attrs) or vtep_mac6(lease.attrs))
        try:
            attrs = replace()
        except Exception as e:  # a bug: say so, keep running with the old MAC
            log.error("Cannot take a new VTEP MAC: %s", e)
            return
        run.keeper.announce(attrs)
        self._dispatch(run, run.tracker.set_own_attrs(attrs), time.monotonic())

    def _loop(self) -> None:
        run = self.running
        if run is None:
            return
        resync = max(1, int(self.opts.iptables_resync))
        next_check = time.monotonic() + CHECK_PERIOD_S
        next_rules = time.monotonic() + resync
        while not self.stop.wait(0.5):
            now = self._heartbeat = time.monotonic()
            if now >= next_check:
                next_check = now + CHECK_PERIOD_S
                self._guarded(run.backend.check, "backend check")
            if now >= next_rules:
                next_rules = now + resync
                for rules in (self.masq, self.fwd_rules, self.masq6, self.fwd_rules6):
                    if rules is not None:
                        self._guarded(functools.partial(self._resync, rules), "iptables resync")

    @staticmethod
    def _resync(rules: IPMasq | ForwardRules) -> None:
        if rules.ensure_rules():
            metrics.IPTABLES_RESYNCS.labels(rules.what).inc()

    def _apply(self, kind: str, fn: Callable[[], object], what: str, t0: float) -> None:
        """A lease change into the backend, counted and timed from t0, the events' arrival."""
        if self._guarded(fn, what):
            metrics.LEASE_EVENTS.labels(kind).inc()
            metrics.LEASE_APPLY_SECONDS.observe(time.monotonic() - t0)
        else:
            metrics.LEASE_EVENT_ERRORS.labels(kind).inc()

    def _guarded(self, fn: Callable[[], object], what: str) -> bool:
        try:
            fn()
            return True
        except Exception as e:  # repair loops log and try again next tick
            log.warning("%s failed: %s", what, e)
            return False

    # -- shutdown -------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """For the systemd watchdog: ready, not stopping, every worker alive, main loop ticking."""
        return (self.ready and not self.stop.is_set() and all(t.is_alive() for t in self._threads)
                and time.monotonic() - self._heartbeat < HEARTBEAT_STALE_S)

    def _shutdown(self) -> None:
        self.systemd.notify("STOPPING=1")
        self.stop.set()
        self.watchdog.join()
        for t in self._threads:
            t.join(timeout=2.0)
        if self.backend is not None:
            self._guarded(self.backend.close, "backend close")
        if self.registry is not None:
            self._guarded(self.registry.close, "etcd close")
        if self.health is not None:
            self.health.close()
        if self.status_socket is not None:
            self.status_socket.close()
