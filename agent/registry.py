"""The etcd v3 lease registry: the only module that talks to etcd (FLANNEL.md §1).

Keys: `<prefix>/config` and `<prefix>/subnets/<ip>-<len>`. Create, renew and watch follow
flannel's `pkg/subnet/etcd/registry.go` (v0.18+), with two deliberate improvements:
a listing asks for each etcd lease's TTL once (flannel: once per key), and a compacted watch
re-lists and resumes instead of hot-looping on the stale revision (flannel #2470).

etcd3 (python3-etcd3 0.13) quirks worked around here:
* `Endpoint.time_retry` defaults to 300 s: after one UNAVAILABLE error the client refuses
  every call ("Trying to use a failed node") for five minutes. We build endpoints with 0.
* Its `Watcher` thread calls the unimported `six` when the stream breaks, so callbacks never
  hear about the error and a watch iterator hangs forever. We drive the Watch stream directly.
* `grpc_options` is passed straight to grpc, which wants a list of pairs, not a dict.
* With username/password it sends the token also as call credentials, which grpc refuses on a
  plain channel; and it never renews the token (etcd's simple tokens expire after 5 idle
  minutes). We drop the call credentials on http and re-authenticate on UNAUTHENTICATED.
"""
from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.parse
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, TypeVar

import etcd3
import etcd3.exceptions
import etcd3.utils
import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2

from .errors import Compacted, EtcdUnreachable, RegistryError, SubnetExists
from .lease import (IPv4Network, Lease, LeaseAttrs, LeaseEvent, LeaseFormatError, decode_attrs,
                    encode_attrs, parse_subnet_key, subnet_key)
from .registry_api import WatchBatch

log = logging.getLogger("fastflannel.registry")

BACKOFF_MIN_S = 0.1          # flannel's watch reconnect back-off: 100 ms doubling ...
BACKOFF_MAX_S = 5.0          # ... to a 5 s cap
STOP_POLL_S = 0.1            # how often a blocked watch checks its stop event
V2_PROBE_TIMEOUT_S = 2.0     # config_in_v2_store is best effort; never stall startup on it
_GRPC_OPTIONS = [
    # grpc's default reconnect back-off grows to 120 s; keep it near the watch back-off so a
    # restarted etcd is found again within seconds.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
    # Detect a silently dead server under an idle watch (etcd's default min ping interval is 5 s).
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
]
# Transport-level failures: the server did not answer (as opposed to answering "no").
_UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_UNREACHABLE_EXC = (etcd3.exceptions.ConnectionFailedError, etcd3.exceptions.ConnectionTimeoutError,
                    etcd3.exceptions.NoServerAvailableError)

T = TypeVar("T")


@dataclass
class EtcdOptions:
    endpoints: list[str] = field(
        default_factory=lambda: ["http://127.0.0.1:4001", "http://127.0.0.1:2379"])
    prefix: str = "/coreos.com/network"
    keyfile: Optional[str] = None
    certfile: Optional[str] = None
    cafile: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    timeout_s: float = 5.0


def _parse_endpoint(url: str) -> tuple[str, str, int]:
    """`https://host:port` -> (scheme, host, port); etcd's client port when none is given."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"bad etcd endpoint {url!r}: want http(s)://host:port")
    try:
        port = parts.port or 2379
    except ValueError:
        raise RegistryError(f"bad etcd endpoint {url!r}: bad port") from None
    return parts.scheme, parts.hostname, port


def _rpc_reason(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


def _is_auth_error(e: BaseException) -> bool:
    return isinstance(e, grpc.RpcError) and hasattr(e, "code") and \
        e.code() == grpc.StatusCode.UNAUTHENTICATED


def _is_unreachable(e: BaseException) -> bool:
    if isinstance(e, _UNREACHABLE_EXC):
        return True
    return isinstance(e, grpc.RpcError) and hasattr(e, "code") and e.code() in _UNREACHABLE_CODES


class EtcdRegistry:
    """flannel's etcd subnet registry; safe to share between threads once connected."""

    def __init__(self, opts: EtcdOptions):
        self.opts = opts
        root = opts.prefix.rstrip("/")      # Go path.Join: a trailing slash is harmless
        self._config_key = f"{root}/config"
        self._subnets_prefix = f"{root}/subnets/"
        # (client, url), swapped as one so a caller never pairs a client with another's URL.
        self._conn: tuple[Optional[etcd3.MultiEndpointEtcd3Client], Optional[str]] = (None, None)
        self._warned_http = False
        self._lock = threading.Lock()        # guards switching _client/_url
        self._retired: list = []             # clients left behind by _failover, closed later

    @property
    def _client(self) -> Optional[etcd3.MultiEndpointEtcd3Client]:
        return self._conn[0]

    @property
    def _url(self) -> Optional[str]:
        return self._conn[1]

    # ---- connection ------------------------------------------------------------------------

    def _credentials(self) -> Optional[grpc.ChannelCredentials]:
        o = self.opts
        if not (o.keyfile and o.certfile):
            # flannel: without a client key pair it connects with plain http, cafile or not.
            if not self._warned_http:      # once: the daemon retries connect() every second
                log.warning("no certificate provided: connecting to etcd with http. This is insecure")
                self._warned_http = True
            return None
        ca = open(o.cafile, "rb").read() if o.cafile else None
        return grpc.ssl_channel_credentials(ca, open(o.keyfile, "rb").read(),
                                            open(o.certfile, "rb").read())

    def _make_client(self, url: str, creds) -> etcd3.MultiEndpointEtcd3Client:
        _, host, port = _parse_endpoint(url)
        ep = etcd3.Endpoint(host, port, secure=creds is not None, creds=creds, time_retry=0,
                            opts=_GRPC_OPTIONS)
        try:
            # Authenticates here when username/password are set.
            client = etcd3.MultiEndpointEtcd3Client(endpoints=[ep], timeout=self.opts.timeout_s,
                                                    user=self.opts.username,
                                                    password=self.opts.password)
        except BaseException:
            ep.close()
            raise
        if creds is None:
            # etcd3 sends the token twice, as metadata and as call credentials; grpc refuses call
            # credentials on a plain channel ("does not have a sufficient security level").
            client.call_credentials = None
        return client

    def _probe(self, url: str, creds) -> etcd3.MultiEndpointEtcd3Client:
        """A client for `url` that has answered one read (raises what the client raised)."""
        _parse_endpoint(url)
        client = self._make_client(url, creds)
        try:
            client.get_response(self._config_key, count_only=True)
        except BaseException:
            client.close()
            raise
        return client

    def connect(self) -> None:
        """Use the first endpoint, in order, that answers a read; EtcdUnreachable if none does."""
        creds = self._credentials()
        failures = []
        for url in self.opts.endpoints:
            try:
                client = self._probe(url, creds)
            except RegistryError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is reported in one line
                if not _is_unreachable(e):
                    raise RegistryError(f"etcd at {url} refused us: {_rpc_reason(e)}") from None
                failures.append(f"{url}: {_rpc_reason(e)}")
                continue
            with self._lock:
                old, self._conn = self._conn[0], (client, url)
            if old is not None:
                old.close()
            log.info("connected to etcd at %s", url)
            return
        raise EtcdUnreachable("cannot reach etcd at " + "; ".join(failures))

    def _failover(self, failed) -> None:
        """After `failed` stopped answering, move to the first other endpoint that answers.

        flannel's clientv3 balances over all endpoints; without this a cluster member that
        dies for good would cut us off although the rest of the cluster is fine."""
        if len(self.opts.endpoints) < 2:
            return
        retired = []
        with self._lock:
            if self._conn[0] is not failed:     # another thread has already moved on
                return
            creds = self._credentials()
            for url in self.opts.endpoints:
                if url == self._conn[1]:
                    continue
                try:
                    client = self._probe(url, creds)
                except Exception:  # noqa: BLE001 - try the next one; the caller reports its error
                    continue
                log.warning("etcd at %s is not answering; switched to %s", self._conn[1], url)
                self._conn = (client, url)
                # Calls may still be running on it: close it at the next switch, not now, so
                # they end with their own error instead of "Channel closed".
                retired, self._retired = self._retired, [failed]
                break
        for old in retired:
            old.close()

    def close(self) -> None:
        with self._lock:
            client, self._conn = self._conn[0], (None, None)
            retired, self._retired = self._retired, []
        for c in retired + ([client] if client is not None else []):
            c.close()

    def _call(self, what: str, fn: Callable[[etcd3.MultiEndpointEtcd3Client], T]) -> T:
        """Run one etcd request; every client error becomes a RegistryError subclass."""
        client, url = self._conn
        if client is None:
            raise RegistryError("etcd registry is not connected")
        try:
            try:
                return fn(client)
            except grpc.RpcError as e:
                # etcd's simple tokens expire after 5 idle minutes and etcd3 never renews them;
                # a daemon that renews once a day would be locked out for good.
                if not (_is_auth_error(e) and self._reauthenticate(client)):
                    raise
                return fn(client)
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001 - etcd3 raises grpc, etcd3 and ValueError types
            if _is_unreachable(e):
                self._failover(client)   # no retry here: a create that did land must not repeat
                raise EtcdUnreachable(f"cannot reach etcd at {url} ({what}): "
                                      f"{_rpc_reason(e)}") from None
            raise RegistryError(f"etcd {what} failed: {_rpc_reason(e)}") from None

    def _reauthenticate(self, client) -> bool:
        """Fetch a fresh auth token into `client`; False when no credentials are configured."""
        o = self.opts
        if o.username is None or o.password is None:
            return False
        try:
            resp = client.authstub.Authenticate(
                etcdrpc.AuthenticateRequest(name=o.username, password=o.password), o.timeout_s)
        except grpc.RpcError as e:
            log.warning("re-authenticating to etcd at %s failed: %s", self._url, _rpc_reason(e))
            return False
        client.metadata = (("token", resp.token),)
        log.info("re-authenticated to etcd at %s", self._url)
        return True

    # ---- config ----------------------------------------------------------------------------

    def get_network_config(self) -> Optional[str]:
        value, _ = self._call("get config", lambda c: c.get(self._config_key))
        return None if value is None else value.decode("utf-8", errors="replace")

    def config_in_v2_store(self) -> bool:
        """True when the config exists only as an etcd v2 key (a pre-v0.18 setup), best effort."""
        return self.config_from_v2_store() is not None

    def config_from_v2_store(self) -> Optional[str]:
        """The config's value in the etcd v2 store, or None (404, v2 disabled, refused), best effort."""
        for url in self.opts.endpoints:
            try:
                scheme, host, port = _parse_endpoint(url)
                path = urllib.parse.quote(f"/v2/keys{self._config_key}")
                ctx = ssl.create_default_context(cafile=self.opts.cafile) if scheme == "https" else None
                if ctx is not None and self.opts.keyfile and self.opts.certfile:
                    ctx.load_cert_chain(self.opts.certfile, self.opts.keyfile)
                with urllib.request.urlopen(f"{scheme}://{host}:{port}{path}",
                                            timeout=V2_PROBE_TIMEOUT_S, context=ctx) as r:
                    node = json.load(r).get("node") if r.status == 200 else None
                    if isinstance(node, dict) and isinstance(node.get("value"), str):
                        return node["value"]
            except Exception:  # noqa: BLE001 - 404, v2 disabled, refused: all mean "no"
                continue
        return None

    # ---- leases ----------------------------------------------------------------------------

    def _key(self, subnet: IPv4Network) -> str:
        return self._subnets_prefix + subnet_key(subnet)

    def _expiration(self, client, lease_id: int, cache: dict[int, Optional[float]]) -> Optional[float]:
        """now + the etcd lease's remaining TTL; None for a key without lease (a reservation)."""
        if not lease_id:
            return None
        if lease_id not in cache:
            ttl = client.get_lease_info(lease_id).TTL
            # -1: the lease expired after the read; its DELETE event is on the way.
            cache[lease_id] = time.time() + max(ttl, 0)
        return cache[lease_id]

    def _lease_from_kv(self, client, kv, cache) -> Optional[Lease]:
        key = kv.key.decode("utf-8", errors="replace")
        try:
            subnet = parse_subnet_key(key)
            attrs = decode_attrs(kv.value)
        except LeaseFormatError as e:
            log.warning("Ignoring bad subnet node %s: %s", key, e)
            return None
        return Lease(subnet, attrs, self._expiration(client, kv.lease, cache), kv.mod_revision)

    def list_leases(self) -> tuple[list[Lease], int]:
        """Every lease under `<prefix>/subnets/` (etcd key order) and the revision of the read."""
        def run(c):
            resp = c.get_prefix_response(self._subnets_prefix)
            cache: dict[int, Optional[float]] = {}
            leases = [self._lease_from_kv(c, kv, cache) for kv in resp.kvs]
            return [x for x in leases if x is not None], resp.header.revision
        return self._call("list leases", run)

    def get_lease(self, subnet: IPv4Network) -> Optional[Lease]:
        def run(c):
            resp = c.get_response(self._key(subnet))
            return self._lease_from_kv(c, resp.kvs[0], {}) if resp.kvs else None
        return self._call("get lease", run)

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        """flannel's createSubnet: grant, then put only if the key does not exist (Version == 0).
        ttl_s == 0 creates a key without lease (a reservation)."""
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, not {ttl_s}")
        key, value = self._key(subnet), encode_attrs(attrs)
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
            raise SubnetExists(f"subnet already exists: {subnet}")
        rev = responses[0].response_put.header.revision if responses else 0
        return Lease(subnet, attrs, time.time() + grant.ttl if grant else None, rev)

    def _revoke(self, lease_id: int) -> None:
        try:
            self._call("lease revoke", lambda c: c.revoke_lease(lease_id))
        except RegistryError as e:
            log.warning("could not revoke etcd lease %x (it expires by itself): %s", lease_id, e)

    def update_lease(self, subnet: IPv4Network, attrs: LeaseAttrs, ttl_s: int) -> Lease:
        """flannel's updateSubnet: an unconditional put under a fresh lease (no KeepAlive);
        ttl_s == 0 writes the key without lease, so a reservation stays one."""
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, not {ttl_s}")
        key, value = self._key(subnet), encode_attrs(attrs)
        grant = self._call("lease grant", lambda c: c.lease(ttl_s)) if ttl_s else None
        resp = self._call("update lease", lambda c: c.put(key, value, lease=grant.id if grant else None))
        expiration = time.time() + grant.ttl if grant else None
        return Lease(subnet, attrs, expiration, resp.header.revision)

    def delete_lease(self, subnet: IPv4Network) -> None:
        key = self._key(subnet)
        self._call("delete lease", lambda c: c.delete(key))

    # ---- watch -----------------------------------------------------------------------------

    def watch_leases(self, revision: int, stop: threading.Event) -> Iterator[WatchBatch]:
        """Lease changes after `revision`, forever: reconnects with back-off, re-lists after a
        compaction (yielding a snapshot batch), returns within ~STOP_POLL_S of stop.set()."""
        next_rev = revision + 1
        backoff = BACKOFF_MIN_S
        relist = False
        compactions = 0          # in a row, without a watch response in between
        while not stop.is_set():
            try:
                if relist:
                    leases, rev = self.list_leases()
                    relist, next_rev = False, rev + 1
                    yield WatchBatch(snapshot=leases, events=[], revision=rev)
                    continue
                with closing(self._watch_stream(next_rev, stop)) as stream:
                    for batch in stream:
                        next_rev, backoff, compactions = batch.revision + 1, BACKOFF_MIN_S, 0
                        if batch.events:
                            yield batch
                if stop.is_set():
                    return
                raise RegistryError("watch stream closed by etcd")
            except Compacted as e:
                # Re-list, then watch from the listing's revision. etcd never compacts past its
                # current revision, so that cannot be compacted already; should it happen anyway,
                # back off rather than spin (flannel #2470 spun here on the stale revision).
                log.warning("%s; re-listing leases", e)
                relist, compactions = True, compactions + 1
                if compactions > 1:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
            except RegistryError as e:
                if stop.is_set():
                    return
                log.warning("watching leases failed (retrying in %.1fs): %s", backoff, e)
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _watch_stream(self, start_rev: int, stop: threading.Event) -> Iterator[WatchBatch]:
        """One Watch stream from start_rev; batches carry the revision to resume after.

        The etcd3 watcher is bypassed (see module docstring); a helper thread cancels the call
        when `stop` is set, which makes the blocked response iterator raise at once."""
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

        # "hasleader": flannel's WithRequireLeader; etcd cancels the watch if it loses quorum.
        metadata = tuple(client.metadata or ()) + (("hasleader", "true"),)
        try:
            call = etcdrpc.WatchStub(client.channel).Watch(
                requests(), credentials=client.call_credentials, metadata=metadata)
        except Exception as e:  # noqa: BLE001 - e.g. ValueError from etcd3's channel property
            raise RegistryError(f"cannot open watch: {_rpc_reason(e)}") from None

        def watchdog():
            while not done.is_set():
                if stop.wait(STOP_POLL_S):
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
                        self._reauthenticate(client)
                    raise RegistryError(f"etcd canceled the watch: {resp.cancel_reason or 'no reason'}")
                if resp.events:
                    cache: dict[int, Optional[float]] = {}
                    events = [ev for ev in (self._event(client, e, cache) for e in resp.events) if ev]
                    cursor = max(cursor, resp.events[-1].kv.mod_revision)
                    yield WatchBatch(snapshot=None, events=events, revision=cursor)
                elif not resp.created:
                    # Progress notification: everything up to header.revision has been sent.
                    cursor = max(cursor, resp.header.revision)
                    yield WatchBatch(snapshot=None, events=[], revision=cursor)
        except grpc.RpcError as e:
            if stop.is_set():
                return
            if _is_auth_error(e):
                self._reauthenticate(client)
            elif _is_unreachable(e):
                self._failover(client)
            raise RegistryError(f"watch stream from {url}: {_rpc_reason(e)}") from None
        except RegistryError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. a lease TTL lookup failing mid-batch
            raise RegistryError(f"watch stream from {url}: {_rpc_reason(e)}") from None
        finally:
            done.set()
            call.cancel()

    def _event(self, client, ev, cache) -> Optional[LeaseEvent]:
        kv = ev.kv
        if ev.type == kv_pb2.Event.DELETE:
            key = kv.key.decode("utf-8", errors="replace")
            try:
                subnet = parse_subnet_key(key)
            except LeaseFormatError as e:
                log.warning("Ignoring bad subnet node %s: %s", key, e)
                return None
            return LeaseEvent(LeaseEvent.REMOVED, Lease(subnet, None, None, kv.mod_revision))
        lease = self._lease_from_kv(client, kv, cache)
        return LeaseEvent(LeaseEvent.ADDED, lease) if lease else None


__all__ = ["EtcdOptions", "EtcdRegistry", "WatchBatch"]
