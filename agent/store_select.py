"""Which etcd store the daemon uses (`-etcd-api=auto|v2|v3`, docs/flannel-compat.md §"The etcd v2
store"): etcd's v3 and v2 keyspaces are separate, flanneld v0.18+ keeps its config and leases in
the first, v0.6-v0.13 in the second.

`StoreSelector` is a Registry over both. With `v3` or `v2` it is that store's registry (a v2-only
daemon never imports grpc). With `auto`, the default, the first config read that finds a config
decides, once: the v3 config wins; a config only in the v2 store runs the daemon on the v2 store,
said in one log line. From then on every call goes to the chosen store alone, so nothing is ever
written to both. While neither holds a config, both are probed on every read.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import EtcdUnreachable, RegistryError
from .etcd_options import EtcdOptions
from .lease import IPv4Network, Lease, LeaseAttrs
from .registry_api import Registry, WatchBatch

log = logging.getLogger("fastflannel.registry")

API_CHOICES = ("auto", "v2", "v3")
RegistryFactory = Callable[[EtcdOptions], Registry]


def _v3(opts: EtcdOptions) -> Registry:
    from .registry import EtcdRegistry  # grpc and etcd3 load only when the v3 store may be used
    return EtcdRegistry(opts)


def _v2(opts: EtcdOptions) -> Registry:
    from .registry_v2 import EtcdV2Registry
    return EtcdV2Registry(opts)


class StoreSelector:
    def __init__(self, opts: EtcdOptions, api: str = "auto", make_v3: RegistryFactory = _v3,
                 make_v2: RegistryFactory = _v2):
        if api not in API_CHOICES:
            raise ValueError(f"etcd API must be one of {', '.join(API_CHOICES)}, not {api!r}")
        self.api = api
        self._config_key = opts.prefix.rstrip("/") + "/config"
        self._stores: dict[str, Registry] = {}
        if api in ("auto", "v3"):
            self._stores["v3"] = make_v3(opts)
        if api in ("auto", "v2"):
            self._stores["v2"] = make_v2(opts)
        self._connected: set[str] = set()
        self.chosen: str | None = api if api != "auto" else None
        self._lock = threading.Lock()

    # -- choosing -------------------------------------------------------------------------------
    def connect(self) -> None:
        """Forced: that store's connect. auto: connect both; EtcdUnreachable only when neither
        answers (another RegistryError, e.g. refused credentials, ends it at once)."""
        if self.chosen is not None:
            self._stores[self.chosen].connect()
            return
        failures = []
        for name, store in self._stores.items():
            try:
                store.connect()
                self._connected.add(name)
            except EtcdUnreachable as e:
                failures.append(f"{e} (etcd {name} API)")
        if not self._connected:
            raise EtcdUnreachable("; ".join(failures))

    def _config_of(self, name: str, quiet: bool) -> str | None:
        """The store's config, connecting it first if it has not answered yet. With `quiet` an
        unreachable store counts as one without config; otherwise its error is raised."""
        store = self._stores[name]
        try:
            if name not in self._connected:
                store.connect()
                self._connected.add(name)
            return store.get_network_config()
        except RegistryError:
            if quiet:
                return None
            raise

    def get_network_config(self) -> str | None:
        if self.chosen is not None:
            return self._stores[self.chosen].get_network_config()
        # auto: v3 must answer before anything is decided, so that a v3 config always wins.
        v3 = self._config_of("v3", quiet=False)
        v2 = self._config_of("v2", quiet=True)
        if v3 is not None:
            if v2 is not None:
                log.warning("The network config %s is in both the etcd v3 and the v2 store: using the "
                            "v3 store; flanneld < v0.18 nodes on the v2 store will not see this node "
                            "(-etcd-api picks a store)", self._config_key)
            self._choose("v3")
            return v3
        if v2 is not None:
            log.info("The network config %s is only in the etcd v2 store (flanneld v0.6-v0.13's): "
                     "running on the etcd v2 store (-etcd-api=v2 says so explicitly)", self._config_key)
            self._choose("v2")
            return v2
        return None

    def _choose(self, name: str) -> None:
        with self._lock:
            self.chosen = name
            others = [s for n, s in self._stores.items() if n != name]
            self._stores = {name: self._stores[name]}
        for other in others:
            try:
                other.close()
            except Exception as e:  # noqa: BLE001 - closing the store we do not use is best effort
                log.debug("closing the unused etcd store failed: %s", e)

    def _store(self) -> Registry:
        if self.chosen is None:
            raise RegistryError("no etcd store chosen yet: the network config is read first")
        return self._stores[self.chosen]

    # -- the Registry protocol, on the chosen store ---------------------------------------------
    def close(self) -> None:
        for store in list(self._stores.values()):
            store.close()

    def config_from_v2_store(self) -> str | None:
        """For the hint of a forced v3 daemon; auto runs on a v2 config instead of hinting."""
        if self.api == "auto":
            return None
        return self._stores[self.api].config_from_v2_store()

    def list_leases(self) -> tuple[list[Lease], int]:
        return self._store().list_leases()

    def get_lease(self, subnet: IPv4Network) -> Lease | None:
        return self._store().get_lease(subnet)

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        return self._store().create_lease(subnet, attrs, ttl_s)

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        return self._store().update_lease(subnet, attrs, ttl_s)

    def delete_lease(self, subnet: IPv4Network) -> None:
        self._store().delete_lease(subnet)

    def watch_leases(self, revision: int, stop: threading.Event) -> Iterator[WatchBatch]:
        return self._store().watch_leases(revision, stop)


if TYPE_CHECKING:
    from .registry import EtcdRegistry
    from .registry_v2 import EtcdV2Registry

    def _satisfy_the_protocol(sel: StoreSelector, v3: EtcdRegistry, v2: EtcdV2Registry) -> list[Registry]:
        return [sel, v3, v2]                 # mypy: each of them is a Registry
