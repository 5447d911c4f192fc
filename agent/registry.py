"""The etcd v3 lease registry (docs/flannel-compat.md §"Keys"): with its connection half in
agent/etcd_conn.py, the only code that talks to etcd v3 (endpoints, failover, keepalive, authentication).

Keys: `<prefix>/config` and `<prefix>/subnets/<ip>-<len>`. Create, renew and watch follow
flannel's `pkg/subnet/etcd/registry.go` (v0.18+), with two deliberate improvements:
a listing asks for each etcd lease's TTL once (flannel: once per key), and a compacted watch
re-lists and resumes instead of hot-looping on the stale revision (flannel #2470).

etcd3 (python3-etcd3 0.13) quirks worked around here and in etcd_conn:
* `Endpoint.time_retry` defaults to 300 s: after one UNAVAILABLE error the client refuses
  every call ("Trying to use a failed node") for five minutes. We build endpoints with 0.
* Its `Watcher` thread calls the unimported `six` when the stream breaks, so callbacks never
  hear about the error and a watch iterator hangs forever. We drive the Watch stream directly.
* `grpc_options` is passed straight to grpc, which wants a list of pairs, not a dict.
* With username/password it authenticates inside its constructor, sends the token also as call
  credentials, which grpc refuses on a plain channel, and never renews the token (etcd's simple
  tokens expire after 5 idle minutes). We authenticate ourselves, send the token as metadata
  only, and re-authenticate on UNAUTHENTICATED.
* Its methods turn grpc errors into exceptions without the status details; we read those from
  the grpc error they were raised from (`__context__`).
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from typing import TypeVar

import etcd3.utils
import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

from . import metrics
from .errors import Compacted, EtcdUnreachable, RegistryError, SubnetExists
from .etcd_conn import (
    LEADER_MD,
    Client,
    EtcdConnection,
    EtcdOptions,
    is_auth_error,
    is_unreachable,
    parse_endpoint,
    rpc_reason,
)
from .lease import (
    IPv4Network,
    IPv6Network,
    Lease,
    LeaseAttrs,
    LeaseEvent,
    LeaseFormatError,
    decode_attrs,
    encode_attrs,
    parse_lease_key,
    subnet_key,
)
from .registry_api import WatchBatch
from .watch_retry import WatchRetry

log = logging.getLogger("fastflannel.registry")

STOP_POLL_S = 0.1            # how often a blocked watch checks its stop event and our endpoint
V2_PROBE_TIMEOUT_S = 2.0     # config_in_v2_store is best effort; never stall startup on it

T = TypeVar("T")



def lease_ttl(client, lease_id: int) -> int:
    """The remaining TTL of an etcd lease, in seconds (-1: expired). python-etcd3's
    get_lease_info() asks for the lease's keys too (keys=True): a reply that grows with every key
    attached to the lease, read once per watch response with a PUT (with 10,000 keys on one etcd
    lease, asking for the TTL alone cut a lease event's p50 from 3.5 to 2.6 ms with vxlan, 3.0 to
    1.3 ms with udp: README §"Scale", docs/architecture.md §"Scale"). We need the TTL only."""
    req = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id, keys=False)
    return client.leasestub.LeaseTimeToLive(req, client.timeout, credentials=client.call_credentials,
                                            metadata=client.metadata).TTL

class _WatchMoved(RegistryError):
    """The registry switched endpoints under a running watch; resume on the new one at once."""


class EtcdRegistry:
    """flannel's etcd subnet registry; safe to share between threads once connected.
    Connections, failover and authentication live in agent/etcd_conn.py."""

    def __init__(self, opts: EtcdOptions):
        self.opts = opts
        root = opts.prefix.rstrip("/")      # Go path.Join: a trailing slash is harmless
        self._config_key = f"{root}/config"
        self._subnets_prefix = f"{root}/subnets/"
        self._ep = EtcdConnection(opts, self._config_key)

    @property
    def _conn(self) -> tuple[Client | None, str | None]:
        return self._ep.current

    @property
    def _client(self) -> Client | None:
        return self._ep.current[0]

    @property
    def _url(self) -> str | None:
        return self._ep.current[1]

    def connect(self) -> None:
        """Use the first endpoint, in order, that answers; EtcdUnreachable if none does. Each
        call is one attempt per endpoint, bounded by opts.timeout_s; the caller retries."""
        self._ep.connect()

    def close(self) -> None:
        self._ep.close()

    def _call(self, what: str, fn: Callable[[Client], T], idempotent: bool = False) -> T:
        """Run one etcd request (deadline: timeout_s); every client error becomes a
        RegistryError subclass. After a failover an idempotent request is repeated once on the
        new endpoint; one that may have landed (a create, a grant) never is."""
        client, url = self._conn
        if client is None:
            raise RegistryError("etcd registry is not connected")
        try:
            try:
                result = fn(client)
                metrics.ETCD.ok(url)
                return result
            except grpc.RpcError as e:
                # An expired token: a daemon that renews once a day would be locked out for good.
                if not (is_auth_error(e) and self._ep.reauthenticate(client)):
                    raise
                return fn(client)
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001 - etcd3 raises grpc, etcd3 and ValueError types
            reason = rpc_reason(e)
            if not is_unreachable(e):
                raise RegistryError(f"etcd {what} failed: {reason}") from None
        if self._ep.failover(client, f"{what}: {reason}") and idempotent:
            return self._call(what, fn)
        metrics.ETCD.failed(url)
        raise EtcdUnreachable(f"cannot reach etcd at {url} ({what}): {reason}")

    # ---- config ----------------------------------------------------------------------------

    def get_network_config(self) -> str | None:
        value, _ = self._call("get config", lambda c: c.get(self._config_key), idempotent=True)
        return None if value is None else value.decode("utf-8", errors="replace")

    def config_in_v2_store(self) -> bool:
        """True when the config exists only as an etcd v2 key (a pre-v0.18 setup), best effort."""
        return self.config_from_v2_store() is not None

    def config_from_v2_store(self) -> str | None:
        """The config's value in the etcd v2 store, or None (404, v2 disabled, refused), best effort."""
        import urllib.parse
        import urllib.request  # here only: ~1.8 MiB of RSS that a running daemon never needs
        for url in self.opts.endpoints:
            try:
                scheme, host, port = parse_endpoint(url)
                path = urllib.parse.quote(f"/v2/keys{self._config_key}")
                ctx = ssl.create_default_context(cafile=self.opts.cafile) if scheme == "https" else None
                if ctx is not None and self.opts.keyfile and self.opts.certfile:
                    ctx.load_cert_chain(self.opts.certfile, self.opts.keyfile)
                host = f"[{host}]" if ":" in host else host          # an IPv6 literal
                with urllib.request.urlopen(f"{scheme}://{host}:{port}{path}",
                                            timeout=V2_PROBE_TIMEOUT_S, context=ctx) as r:
                    node = json.load(r).get("node") if r.status == 200 else None
                    if isinstance(node, dict) and isinstance(node.get("value"), str):
                        return node["value"]
            except Exception:  # noqa: BLE001 - 404, v2 disabled, refused: all mean "no"
                continue
        return None

    # ---- leases ----------------------------------------------------------------------------

    def _key(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
        return self._subnets_prefix + subnet_key(subnet, ipv6_subnet)

    def _expiration(self, client, lease_id: int, cache: dict[int, float | None]) -> float | None:
        """now + the etcd lease's remaining TTL; None for a key without lease (a reservation)."""
        if not lease_id:
            return None
        if lease_id not in cache:
            ttl = lease_ttl(client, lease_id)
            # -1: the lease expired after the read; its DELETE event is on the way.
            cache[lease_id] = time.time() + max(ttl, 0)
        return cache[lease_id]

    def _lease_from_kv(self, client, kv, cache) -> Lease | None:
        key = kv.key.decode("utf-8", errors="replace")
        try:
            subnet, subnet6 = parse_lease_key(key)
            attrs = decode_attrs(kv.value)
        except LeaseFormatError as e:
            log.warning("Ignoring bad subnet node %s: %s", key, e)
            return None
        return Lease(subnet, attrs, self._expiration(client, kv.lease, cache), kv.mod_revision, subnet6,
                     kv.create_revision)

    def list_leases(self) -> tuple[list[Lease], int]:
        """Every lease under `<prefix>/subnets/` (etcd key order) and the revision of the read."""
        def run(c):
            resp = c.get_prefix_response(self._subnets_prefix)
            cache: dict[int, float | None] = {}
            leases = [self._lease_from_kv(c, kv, cache) for kv in resp.kvs]
            return [x for x in leases if x is not None], resp.header.revision
        return self._call("list leases", run, idempotent=True)

    def get_lease(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> Lease | None:
        def run(c):
            resp = c.get_response(self._key(subnet, ipv6_subnet))
            return self._lease_from_kv(c, resp.kvs[0], {}) if resp.kvs else None
        return self._call("get lease", run, idempotent=True)

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int,
                     ipv6_subnet: IPv6Network | None = None) -> Lease:
        """flannel's createSubnet: grant, then put only if the key does not exist (Version == 0).
        ttl_s == 0 creates a key without lease (a reservation)."""
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, not {ttl_s}")
        key, value = self._key(subnet, ipv6_subnet), encode_attrs(attrs)
        grant = self._call("lease grant", lambda c: c.lease(ttl_s)) if ttl_s else None

        def txn(c):
            t = c.transactions
            return c.transaction(compare=[t.version(key) == 0],
                                 success=[t.put(key, value, lease=grant.id if grant else None)],
                                 failure=[])
        try:
            ok, responses = self._call("create lease", txn)
        except RegistryError:
            # As flannel: revoke even if the txn may have landed (its key then goes too), so a
            # failed create never leaves a key behind that the caller does not know about.
            if grant:
                self._revoke(grant.id)
            raise
        if not ok:
            if grant:
                self._revoke(grant.id)
            raise SubnetExists(f"subnet already exists: {subnet_key(subnet, ipv6_subnet)}")
        rev = responses[0].response_put.header.revision if responses else 0
        return Lease(subnet, attrs, time.time() + grant.ttl if grant else None, rev, ipv6_subnet, rev)

    def _revoke(self, lease_id: int) -> None:
        try:
            self._call("lease revoke", lambda c: c.revoke_lease(lease_id))
        except RegistryError as e:
            log.warning("could not revoke etcd lease %x (it expires by itself): %s", lease_id, e)

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int,
                     ipv6_subnet: IPv6Network | None = None) -> Lease:
        """flannel's updateSubnet: an unconditional put under a fresh lease (no KeepAlive);
        ttl_s == 0 writes the key without lease, so a reservation stays one."""
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, not {ttl_s}")
        key, value = self._key(subnet, ipv6_subnet), encode_attrs(attrs)
        grant = self._call("lease grant", lambda c: c.lease(ttl_s)) if ttl_s else None
        resp = self._call("update lease", lambda c: c.put(key, value, lease=grant.id if grant else None))
        expiration = time.time() + grant.ttl if grant else None
        return Lease(subnet, attrs, expiration, resp.header.revision, ipv6_subnet)

    def delete_lease(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> None:
        key = self._key(subnet, ipv6_subnet)
        self._call("delete lease", lambda c: c.delete(key), idempotent=True)

    # ---- watch -----------------------------------------------------------------------------

    def watch_leases(self, revision: int, stop: threading.Event) -> Iterator[WatchBatch]:
        """Lease changes after `revision`, forever: resumes after the last revision seen (on
        whichever endpoint answers), retries with back-off, re-lists after a compaction
        (yielding a snapshot batch), returns within ~STOP_POLL_S of stop.set()."""
        next_rev = revision + 1
        relist = False
        retry = WatchRetry(stop, "revision")
        while not stop.is_set():
            try:
                if relist:
                    leases, rev = self.list_leases()
                    relist, next_rev = False, rev + 1
                    yield WatchBatch(snapshot=leases, events=[], revision=rev)
                    continue
                with closing(self._watch_stream(next_rev, stop)) as stream:
                    for batch in stream:
                        next_rev = batch.revision + 1
                        retry.answered(self._url, next_rev)
                        if batch.events:
                            yield batch
                if stop.is_set():
                    return
                raise RegistryError("watch stream closed by etcd")
            except _WatchMoved as e:
                retry.moved(e, next_rev)
            except Compacted as e:
                # Re-list, then watch from the listing's revision (etcd never compacts past its
                # current revision, so that one is not compacted already).
                retry.compacted(e)
                relist = True
            except RegistryError as e:
                if stop.is_set():
                    return
                retry.failed(e, self._url)

    def _watch_stream(self, start_rev: int, stop: threading.Event) -> Generator[WatchBatch, None, None]:
        """One Watch stream from start_rev; batches carry the revision to resume after (the
        first, empty one says the watch was created).

        The etcd3 watcher is bypassed (see module docstring). A helper thread cancels the call
        when `stop` is set or the registry moved to another endpoint, which makes the blocked
        response iterator raise at once."""
        client, url = self._conn
        if client is None:
            raise RegistryError("etcd registry is not connected")
        prefix = self._subnets_prefix.encode()
        create = etcdrpc.WatchCreateRequest(key=prefix, range_end=etcd3.utils.prefix_range_end(prefix),
                                            start_revision=start_rev, progress_notify=True)
        done = threading.Event()

        def requests():
            yield etcdrpc.WatchRequest(create_request=create)
            done.wait()   # keep our side of the stream open until we are finished with it

        # "hasleader": etcd cancels the watch when its member loses quorum.
        metadata = tuple(client.metadata or ()) + LEADER_MD
        try:
            call = etcdrpc.WatchStub(client.channel).Watch(requests(), metadata=metadata)
        except Exception as e:  # noqa: BLE001 - e.g. ValueError from etcd3's channel property
            raise RegistryError(f"cannot open watch: {rpc_reason(e)}") from None

        def watchdog():
            while not done.is_set():
                if stop.wait(STOP_POLL_S) or self._conn[0] is not client:
                    call.cancel()
                    return

        threading.Thread(target=watchdog, name="etcd-watch-stop", daemon=True).start()
        cursor = start_rev - 1
        try:
            for resp in call:
                if resp.compact_revision:
                    raise Compacted(f"watch from revision {start_rev}: required revision has been "
                                    f"compacted (compacted at {resp.compact_revision})")
                if resp.canceled:
                    # An expired token shows up here as "permission denied" (etcd checks the
                    # watch's permission when it is created).
                    if "permission denied" in resp.cancel_reason or "auth" in resp.cancel_reason:
                        self._ep.reauthenticate(client)
                    raise RegistryError(f"etcd canceled the watch: {resp.cancel_reason or 'no reason'}")
                if resp.events:
                    cache: dict[int, float | None] = {}
                    events = [ev for ev in (self._event(client, e, cache) for e in resp.events) if ev]
                    cursor = max(cursor, resp.events[-1].kv.mod_revision)
                    yield WatchBatch(snapshot=None, events=events, revision=cursor)
                elif not resp.created:
                    # Progress notification: everything up to header.revision has been sent.
                    cursor = max(cursor, resp.header.revision)
                    yield WatchBatch(snapshot=None, events=[], revision=cursor)
                else:
                    yield WatchBatch(snapshot=None, events=[], revision=cursor)
        except grpc.RpcError as e:
            if stop.is_set():
                return
            if self._conn[0] is not client or (
                    is_unreachable(e) and self._ep.failover(client, f"watch: {rpc_reason(e)}")):
                raise _WatchMoved(f"the lease watch moved from {url} to {self._url}") from None
            if is_auth_error(e):
                self._ep.reauthenticate(client)
            raise RegistryError(f"watch stream from {url}: {rpc_reason(e)}") from None
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a lease TTL lookup failing mid-batch
            raise RegistryError(f"watch stream from {url}: {rpc_reason(e)}") from None
        finally:
            done.set()
            call.cancel()

    def _event(self, client, ev, cache) -> LeaseEvent | None:
        kv = ev.kv
        if ev.type == kv_pb2.Event.DELETE:
            key = kv.key.decode("utf-8", errors="replace")
            try:
                subnet, subnet6 = parse_lease_key(key)
            except LeaseFormatError as e:
                log.warning("Ignoring bad subnet node %s: %s", key, e)
                return None
            return LeaseEvent(LeaseEvent.REMOVED, Lease(subnet, None, None, kv.mod_revision, subnet6))
        lease = self._lease_from_kv(client, kv, cache)
        return LeaseEvent(LeaseEvent.ADDED, lease) if lease else None


__all__ = ["EtcdOptions", "EtcdRegistry", "WatchBatch"]
