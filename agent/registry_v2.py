"""The etcd v2 lease registry: flannel v0.6-v0.13's store (docs/flannel-compat.md §"The etcd v2
store"), over HTTP(S) with the standard library only (agent/etcd_v2_conn.py); it never imports grpc.

Keys are the v3 registry's: `<prefix>/config` and `<prefix>/subnets/<ip>-<len>`; values are
written in the v0.6-v0.13 layout (`lease.encode_attrs_v2`) and read in any. The calls follow
flannel's `subnet/etcdv2/registry.go` and `local_manager.go` (v0.7-v0.13; `subnet/registry.go` in
v0.6.2):
* reads use `quorum=true`; the listing is a recursive GET of `<prefix>/subnets` (we also ask for
  `sorted=true`: flannel's "first lease in key order" needs an order, etcd's map has none), and
  its `X-Etcd-Index` is where the watch starts;
* create is `PUT …?prevExist=false&ttl=86400`; a renewal `PUT …?prevExist=true&ttl=86400` (flannel
  sends no prevExist; the condition only makes a vanished key go through a create, which never
  overwrites another host's); a reservation (ttl 0) is written without `ttl=`, so it stays one;
* the watch is a recursive long poll `?wait=true&recursive=true&waitIndex=<cursor+1>`; `delete`,
  `expire` and `compareAndDelete` are removals (flannel's default branch made the last one an
  addition), every other action an addition; errorCode 401 (the index fell out of the 1,000
  events etcd keeps) re-lists.

Beyond flannel: a long poll waits WATCH_WINDOW_S and is then re-issued from the same index (etcd
never ends one itself), so a member that stopped answering is noticed by the next poll's deadline
and left for the next endpoint; an idle poll still advances the cursor to the `X-Etcd-Index` its
answer began with (nothing under the prefix happened before it), so a busy store elsewhere does
not push an idle watch out of etcd's history. Removing the subnets directory (or a parent) re-lists:
etcd sends one event for the directory, and flannel lost every lease under it.
"""
from __future__ import annotations

import calendar
import http.client
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import Compacted, EtcdUnreachable, LeaseFormatError, RegistryError, SubnetExists
from .etcd_options import EtcdOptions
from .etcd_v2_conn import (
    EVENT_INDEX_CLEARED,
    KEY_NOT_FOUND,
    NODE_EXIST,
    EtcdV2Connection,
    Exchange,
    NoAnswer,
    V2Response,
)
from .lease import (
    IPv4Network,
    IPv6Network,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    decode_attrs,
    encode_attrs_v2,
    parse_lease_key,
    subnet_key,
)
from .registry_api import WatchBatch
from .watch_retry import WatchRetry

if TYPE_CHECKING:
    from .registry_api import Registry

log = logging.getLogger("fastflannel.registry")

# A long poll waits this long for an event before it is re-issued from the same index. With the
# head's deadline (EtcdOptions.timeout_s, 5 s) a silent member is left within about 9 s.
WATCH_WINDOW_S = 4.0
STOP_POLL_S = 0.1            # how often a blocked poll looks at its stop event and our endpoint
REMOVED_ACTIONS = frozenset({"delete", "expire", "compareAndDelete"})
ADDED_ACTIONS = frozenset({"set", "create", "update", "compareAndSwap"})
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


class _WatchMoved(RegistryError):
    """The registry switched endpoints under a running watch; resume on the new one at once."""


def parse_rfc3339(text: str) -> float:
    """etcd's `expiration` (Go's RFC3339Nano, e.g. 2026-12-01T10:53:31.407100781Z) as epoch seconds."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(f"bad time {text!r}")
    t = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2) or 0)
    zone = m.group(3)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        t -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return t


def node_expiration(node: dict, now: float) -> float | None:
    """When etcd drops the key: now + its `ttl` (seconds left, by etcd's clock, so clock skew
    between us and etcd does not matter), else its `expiration`; None for a key without TTL."""
    ttl = node.get("ttl")
    if isinstance(ttl, int) and not isinstance(ttl, bool):
        return now + max(ttl, 0)
    exp = node.get("expiration")
    if isinstance(exp, str):
        try:
            return parse_rfc3339(exp)
        except ValueError:
            log.warning("Ignoring bad expiration %r of %s", exp, node.get("key"))
    return None


class _PollGuard:
    """Ends a blocked long poll at once when `stop` is set or the registry moved endpoints."""

    def __init__(self, stop: threading.Event, current: Callable[[], str | None]):
        self._stop, self._current = stop, current
        self._lock = threading.Lock()
        self._armed: tuple[Exchange, str] | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, ex: Exchange, url: str) -> None:
        with self._lock:
            self._armed = (ex, url)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="etcd-v2-watch-stop", daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def _run(self) -> None:
        while not self._done.is_set():
            self._stop.wait(STOP_POLL_S)
            with self._lock:
                armed = self._armed
            if armed is not None and (self._stop.is_set() or self._current() != armed[1]):
                armed[0].abort()
            if self._stop.is_set():
                return

    def close(self) -> None:
        self._done.set()


class EtcdV2Registry:
    """flannel's etcd v2 subnet registry; safe to share between threads once connected."""

    def __init__(self, opts: EtcdOptions):
        self.opts = opts
        root = opts.prefix.rstrip("/")      # Go path.Join: a trailing slash is harmless
        self._config_key = f"{root}/config"
        self._subnets_dir = f"{root}/subnets"
        self._conn = EtcdV2Connection(opts, "/v2/keys" + self._config_key)

    @property
    def url(self) -> str | None:
        return self._conn.current

    def connect(self) -> None:
        """Use the first endpoint, in order, that serves the v2 API; EtcdUnreachable if none."""
        self._conn.connect()

    def close(self) -> None:
        self._conn.current = None

    def _do(self, what: str, method: str, key: str, params: dict[str, str] | None = None,
            form: dict[str, str] | None = None, idempotent: bool = False) -> V2Response:
        """One request to the current endpoint; after a failover an idempotent request is
        repeated once on the new one, one that may have been applied (a create) never is."""
        url = self._conn.current
        if url is None:
            raise RegistryError("etcd registry is not connected")
        try:
            r = self._conn.request(url, method, "/v2/keys" + key, params, form)
        except NoAnswer as e:
            reason = str(e)
        else:
            if not r.v2_served:
                raise RegistryError(f"etcd at {url} no longer serves the etcd v2 API ({what})")
            metrics.ETCD.ok(url)
            return r
        if self._conn.failover(url, f"{what}: {reason}") and idempotent:
            return self._do(what, method, key, params, form)
        metrics.ETCD.failed(url)
        raise EtcdUnreachable(f"cannot reach etcd at {url} ({what}): {reason}")

    @staticmethod
    def _node(r: V2Response, what: str) -> dict:
        node = r.body.get("node") if isinstance(r.body, dict) else None
        if not r.ok or not isinstance(node, dict):
            raise RegistryError(f"etcd {what} failed: {r.error_text()}")
        return node

    # ---- config ----------------------------------------------------------------------------

    def get_network_config(self) -> str | None:
        r = self._do("get config", "GET", self._config_key, {"quorum": "true"}, idempotent=True)
        if r.error_code == KEY_NOT_FOUND:
            return None
        value = self._node(r, "get config").get("value")
        return value if isinstance(value, str) else None     # a directory holds no config

    def config_from_v2_store(self) -> str | None:
        """This registry is the v2 store: its config, best effort (never raises)."""
        try:
            return self.get_network_config()
        except RegistryError:
            return None

    # ---- leases ----------------------------------------------------------------------------

    def _key(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
        return f"{self._subnets_dir}/{subnet_key(subnet, ipv6_subnet)}"

    def _lease(self, node: dict, now: float) -> Lease | None:
        key = str(node.get("key", ""))
        try:
            if node.get("dir") or key.rsplit("/", 1)[0] != self._subnets_dir:
                raise LeaseFormatError("not a lease key")
            subnet, subnet6 = parse_lease_key(key)
            value = node.get("value")
            attrs = decode_attrs(value if isinstance(value, str) else "")
        except LeaseFormatError as e:
            log.warning("Ignoring bad subnet node %s: %s", key, e)
            return None
        return Lease(subnet, attrs, node_expiration(node, now), _int(node.get("modifiedIndex")), subnet6,
                     _int(node.get("createdIndex")))

    def list_leases(self) -> tuple[list[Lease], int]:
        """Every lease under `<prefix>/subnets/` (key order) and the etcd index of the read."""
        r = self._do("list leases", "GET", self._subnets_dir,
                     {"recursive": "true", "quorum": "true", "sorted": "true"}, idempotent=True)
        if r.error_code == KEY_NOT_FOUND:           # no lease yet: flannel takes the error's index
            return [], _int(r.index if r.index is not None else r.body.get("index"))
        node, now = self._node(r, "list leases"), time.time()
        if r.index is None:
            raise RegistryError("etcd list leases: the answer has no X-Etcd-Index")
        children = node.get("nodes") or []
        leases = [self._lease(n, now) for n in children if isinstance(n, dict)]
        return [x for x in leases if x is not None], r.index

    def get_lease(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> Lease | None:
        r = self._do("get lease", "GET", self._key(subnet, ipv6_subnet), {"quorum": "true"}, idempotent=True)
        if r.error_code == KEY_NOT_FOUND:
            return None
        return self._lease(self._node(r, "get lease"), time.time())

    def _put(self, what: str, subnet: IPv4Network, subnet6: IPv6Network | None, attrs: LeaseAttrs,
             ttl_s: int, prev_exist: bool, idempotent: bool) -> V2Response:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, not {ttl_s}")
        params = {"prevExist": "true" if prev_exist else "false"}
        if ttl_s:
            params["ttl"] = str(ttl_s)
        form = {"value": encode_attrs_v2(attrs).decode()}
        return self._do(what, "PUT", self._key(subnet, subnet6), params, form, idempotent=idempotent)

    def _written(self, r: V2Response, what: str, subnet: IPv4Network, subnet6: IPv6Network | None,
                 attrs: LeaseAttrs) -> Lease:
        node = self._node(r, what)
        return Lease(subnet, attrs, node_expiration(node, time.time()), _int(node.get("modifiedIndex")),
                     subnet6, _int(node.get("createdIndex")))

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int,
                     ipv6_subnet: IPv6Network | None = None) -> Lease:
        """flannel's createSubnet: `prevExist=false`; ttl_s == 0 creates a reservation."""
        r = self._put("create lease", subnet, ipv6_subnet, attrs, ttl_s, prev_exist=False, idempotent=False)
        if r.error_code == NODE_EXIST:
            raise SubnetExists(f"subnet already exists: {subnet_key(subnet, ipv6_subnet)}")
        return self._written(r, "create lease", subnet, ipv6_subnet, attrs)

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int,
                     ipv6_subnet: IPv6Network | None = None) -> Lease:
        """A renewal: `prevExist=true` with a fresh TTL (ttl_s == 0 keeps a reservation one). A
        key that vanished meanwhile is created again with `prevExist=false` (SubnetExists when
        another host took it first)."""
        r = self._put("update lease", subnet, ipv6_subnet, attrs, ttl_s, prev_exist=True, idempotent=True)
        if r.error_code == KEY_NOT_FOUND:
            return self.create_lease(subnet, attrs, ttl_s, ipv6_subnet)
        return self._written(r, "update lease", subnet, ipv6_subnet, attrs)

    def delete_lease(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> None:
        r = self._do("delete lease", "DELETE", self._key(subnet, ipv6_subnet), idempotent=True)
        if not r.ok and r.error_code != KEY_NOT_FOUND:
            raise RegistryError(f"etcd delete lease failed: {r.error_text()}")

    # ---- watch -----------------------------------------------------------------------------

    def watch_leases(self, revision: int, stop: threading.Event) -> Iterator[WatchBatch]:
        """Lease changes after etcd index `revision`, forever: resumes after the last index seen
        (on whichever endpoint answers), retries with back-off, re-lists when etcd has cleared
        that index (yielding a snapshot batch), returns within ~STOP_POLL_S of stop.set()."""
        cursor, relist = revision, False
        retry = WatchRetry(stop, "index")
        guard = _PollGuard(stop, lambda: self._conn.current)
        try:
            while not stop.is_set():
                try:
                    if relist:
                        leases, cursor = self.list_leases()
                        relist = False
                        yield WatchBatch(snapshot=leases, events=[], revision=cursor)
                        continue
                    ev, cursor, relist = self._poll(cursor, stop, guard)
                    retry.answered(self.url, cursor + 1)
                    if ev is not None:
                        yield WatchBatch(snapshot=None, events=[ev], revision=cursor)
                except _WatchMoved as e:
                    retry.moved(e, cursor + 1)
                except Compacted as e:
                    # flannel re-lists at once (more than 1,000 writes during one listing clear
                    # the next poll again: then the retry backs off)
                    retry.compacted(e)
                    relist = True
                except RegistryError as e:
                    if stop.is_set():
                        return
                    retry.failed(e, self.url)
        finally:
            guard.close()

    def _poll(self, cursor: int, stop: threading.Event,
              guard: _PollGuard) -> tuple[LeaseEvent | None, int, bool]:
        """One long poll from cursor + 1: (event or None, the new cursor, re-list needed)."""
        url = self._conn.current
        if url is None:
            raise RegistryError("etcd registry is not connected")
        params = {"wait": "true", "recursive": "true", "waitIndex": str(cursor + 1)}
        try:
            ex = self._conn.open(url, "GET", "/v2/keys" + self._subnets_dir, params,
                                 before_send=lambda x: guard.arm(x, url))
        except NoAnswer as e:
            guard.disarm()
            self._moved_or_failed(url, stop, f"watch: {e}")
            return None, cursor, False
        try:
            return self._poll_answer(ex, url, cursor, stop)
        finally:
            guard.disarm()
            ex.close()

    def _moved_or_failed(self, url: str, stop: threading.Event, reason: str) -> None:
        if stop.is_set():
            return
        if self._conn.current != url or self._conn.failover(url, reason):
            raise _WatchMoved(f"the lease watch moved from {url} to {self.url}")
        raise RegistryError(f"watch at {url}: {reason}")

    def _poll_answer(self, ex: Exchange, url: str, cursor: int,
                     stop: threading.Event) -> tuple[LeaseEvent | None, int, bool]:
        assert ex.resp is not None
        head = ex.resp.getheader("X-Etcd-Index")
        if ex.resp.status != 200:
            try:
                r = self._conn.answer(ex.resp, ex.read())
            except (OSError, http.client.HTTPException, NoAnswer) as e:
                self._moved_or_failed(url, stop, f"watch: {e}")
                return None, cursor, False
            if r.error_code == EVENT_INDEX_CLEARED:
                raise Compacted(f"watch from index {cursor + 1}: {r.error_text()}")
            raise RegistryError(f"watch at {url}: {r.error_text()}")
        try:
            raw = ex.read(deadline=time.monotonic() + WATCH_WINDOW_S)
        except (OSError, http.client.HTTPException):
            raw = b""         # the window passed (or the poll was aborted): nothing before `head`
        if stop.is_set():
            return None, cursor, False
        if self._conn.current != url:
            raise _WatchMoved(f"the lease watch moved from {url} to {self.url}")
        if not raw:
            # etcd answered the head after looking through its history from cursor + 1 up to
            # `head`: nothing under the prefix happened in between.
            return None, max(cursor, _int(head)), False
        return self._event(self._conn.answer(ex.resp, raw).body, cursor)

    def _event(self, body: Any, cursor: int) -> tuple[LeaseEvent | None, int, bool]:
        node = body.get("node") if isinstance(body, dict) else None
        if not isinstance(node, dict):
            raise RegistryError(f"etcd watch: an answer without a node: {str(body)[:200]}")
        action, key = body.get("action"), str(node.get("key", ""))
        index = max(cursor, _int(node.get("modifiedIndex")))
        if action in REMOVED_ACTIONS:
            if key == self._subnets_dir or self._subnets_dir.startswith(key.rstrip("/") + "/"):
                log.warning("%s of %s: every lease under it is gone; re-listing", action, key)
                return None, index, True
            if node.get("dir") or key.rsplit("/", 1)[0] != self._subnets_dir:
                return None, index, False
            try:
                subnet, subnet6 = parse_lease_key(key)
            except LeaseFormatError as e:
                log.warning("Ignoring bad subnet node %s: %s", key, e)
                return None, index, False
            return LeaseEvent(LeaseEvent.REMOVED, Lease(subnet, None, None, index, subnet6)), index, False
        if action in ADDED_ACTIONS and not node.get("dir"):
            lease = self._lease(node, time.time())
            return (LeaseEvent(LeaseEvent.ADDED, lease) if lease else None), index, False
        return None, index, False


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise RegistryError(f"etcd answered a bad index {value!r}")


if TYPE_CHECKING:
    def _satisfies_the_protocol(reg: EtcdV2Registry) -> Registry:
        return reg                           # mypy: EtcdV2Registry is a Registry
