"""The registry's connections to etcd (agent/registry.py is the only user of this module).

One etcd3 client, that is one grpc channel, per endpoint, kept for the registry's whole life:
grpc's reconnect back-off then carries over from one attempt to the next, and a member that
comes back is found again by the channel itself. Requests go to the current endpoint; when it
stops answering, every caller (the watch included) moves to the next endpoint that answers a
read with a leader, as flannel's clientv3 balances over all of `-etcd-endpoints`.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import etcd3
import etcd3.exceptions
import grpc
from etcd3 import etcdrpc

from . import metrics
from .errors import EtcdUnreachable, RegistryError
from .etcd_options import EtcdOptions, parse_endpoint

log = logging.getLogger("fastflannel.registry")

# A member that stops answering (packets dropped, no reset) is noticed under an idle watch within
# KEEPALIVE_TIME + KEEPALIVE_TIMEOUT = 8 s. etcd answers pings less than 5 s apart
# (--grpc-keepalive-min-time) with GOAWAY "too_many_pings", so the period keeps a 1 s margin.
KEEPALIVE_TIME_MS = 6000
KEEPALIVE_TIMEOUT_MS = 2000
# grpc core also makes the keepalive timeout the socket's TCP_USER_TIMEOUT, so a connect to a
# member that drops packets ends after 2 s too, and the next endpoint is tried.
RECONNECT_BACKOFF_MIN_MS = 100   # grpc's own default grows to 120 s; a restarted etcd is found
RECONNECT_BACKOFF_MAX_MS = 5000  # again within seconds
LEADER_MD = (("hasleader", "true"),)   # flannel's WithRequireLeader: a member without quorum refuses
# Transport-level failures: the server did not answer (as opposed to answering "no").
_UNREACHABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_UNREACHABLE_EXC = (etcd3.exceptions.ConnectionFailedError, etcd3.exceptions.ConnectionTimeoutError,
                    etcd3.exceptions.NoServerAvailableError)


def grpc_options(connect_timeout_s: float) -> list[tuple[str, int]]:
    return [
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
        # Despite its name, grpc core gives each connection attempt at least this long
        # (MIN_CONNECT_TIMEOUT in grpc's doc/connection-backoff.md). At 100 ms no etcd more than
        # ~100 ms away could ever be reached (issue 8): a handshake takes two round trips.
        ("grpc.min_reconnect_backoff_ms", int(connect_timeout_s * 1000)),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # grpc core waits for a keepalive ack up to the ping timeout (default 60 s), not the
        # keepalive timeout; and after 2 pings without data it stops pinging an idle watch.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),
        # etcd (PermitWithoutStream=false) counts a ping on a connection without a call as abuse.
        ("grpc.keepalive_permit_without_calls", 0),
    ]


def _grpc_error(e: BaseException) -> grpc.RpcError | None:
    """The grpc error behind `e`: etcd3 raises its own exceptions from inside `except RpcError`."""
    for x in (e, e.__context__):
        if isinstance(x, grpc.RpcError) and hasattr(x, "code"):
            return x
    return None


def rpc_reason(e: BaseException) -> str:
    g = _grpc_error(e)
    text = f"{g.code().name}: {g.details()}" if g is not None else (str(e) or type(e).__name__)
    return " ".join(text.split())     # one log line


def is_auth_error(e: BaseException) -> bool:
    return isinstance(e, grpc.RpcError) and hasattr(e, "code") and \
        e.code() == grpc.StatusCode.UNAUTHENTICATED


def is_unreachable(e: BaseException) -> bool:
    if isinstance(e, _UNREACHABLE_EXC):
        return True
    return isinstance(e, grpc.RpcError) and hasattr(e, "code") and e.code() in _UNREACHABLE_CODES


if TYPE_CHECKING:
    from typing import TypeAlias  # 3.10+; annotations are not evaluated at run time here
Client: TypeAlias = etcd3.MultiEndpointEtcd3Client


class EtcdConnection:
    """The endpoints of one registry, the current one, and the move to another."""

    def __init__(self, opts: EtcdOptions, probe_key: str):
        self.opts = opts
        self._probe_key = probe_key.encode()
        # (client, url), swapped as one so a caller never pairs a client with another's URL.
        self.current: tuple[Client | None, str | None] = (None, None)
        self._clients: dict[str, Client] = {}
        self._creds: grpc.ChannelCredentials | None = None
        self._warned_http = False
        self._clients_lock = threading.Lock()    # guards _clients
        self._switch_lock = threading.Lock()     # one failover at a time

    def _credentials(self) -> grpc.ChannelCredentials | None:
        o = self.opts
        if not (o.keyfile and o.certfile):
            # flannel: without a client key pair it connects with plain http, cafile or not.
            if not self._warned_http:
                log.warning("no certificate provided: connecting to etcd with http. This is insecure")
                self._warned_http = True
            return None
        if self._creds is None:
            try:
                files = [o.cafile, o.keyfile, o.certfile]
                ca, key, cert = (open(f, "rb").read() if f else None for f in files)  # noqa: SIM115
            except OSError as e:
                raise RegistryError(f"cannot read the etcd TLS files: {e}") from None
            self._creds = grpc.ssl_channel_credentials(ca, key, cert)
        return self._creds

    def _client_for(self, url: str) -> Client:
        with self._clients_lock:
            client = self._clients.get(url)
            if client is None:
                _, host, port = parse_endpoint(url)
                creds = self._credentials()
                # grpc's target is host:port; an IPv6 literal needs its brackets back (an
                # IPv6-only host reaches etcd at http://[fd00::1]:2379).
                host = f"[{host}]" if ":" in host else host
                ep = etcd3.Endpoint(host, port, secure=creds is not None, creds=creds, time_retry=0,
                                    opts=grpc_options(self.opts.timeout_s))
                # Without user/password: etcd3 would authenticate in here (blocking) and send the
                # token also as call credentials, which grpc refuses on a plain channel. We send
                # it as metadata only, fetched in _probe.
                client = Client(endpoints=[ep], timeout=self.opts.timeout_s)
                self._clients[url] = client
            return client

    def _probe(self, url: str) -> Client:
        """The client for `url` once its member has answered a read with a leader (raises the
        grpc error otherwise; a member cut off from its quorum says "no leader" at once)."""
        client = self._client_for(url)
        if self.opts.username is not None and self.opts.password is not None and not client.metadata:
            self.authenticate(client)
        client.kvstub.Range(etcdrpc.RangeRequest(key=self._probe_key, count_only=True),
                            self.opts.timeout_s, metadata=tuple(client.metadata or ()) + LEADER_MD)
        return client

    def connect(self) -> None:
        """Use the first endpoint, in order, that answers; EtcdUnreachable if none does. Each
        call is one attempt per endpoint, bounded by timeout_s; the caller retries."""
        failures = []
        for url in self.opts.endpoints:
            try:
                client = self._probe(url)
            except RegistryError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is reported in one line
                if not is_unreachable(e):
                    raise RegistryError(f"etcd at {url} refused us: {rpc_reason(e)}") from None
                failures.append(f"{url}: {rpc_reason(e)}")
                continue
            self.current = (client, url)
            log.info("connected to etcd at %s", url)
            metrics.ETCD.ok(url)
            return
        metrics.ETCD.failed(self.current[1] or (self.opts.endpoints or [""])[0])
        raise EtcdUnreachable("cannot reach etcd at " + "; ".join(failures))

    def failover(self, failed: Client, reason: str) -> bool:
        """`failed` stopped answering: move to the next endpoint, in ring order, that answers.
        True when the current client is now another one."""
        urls = self.opts.endpoints
        with self._switch_lock:
            client, url = self.current
            if client is not failed:            # another thread has already moved on
                return client is not None
            if len(urls) < 2:
                return False
            i = urls.index(url) if url in urls else 0
            for cand in urls[i + 1:] + urls[:i]:
                try:
                    new = self._probe(cand)
                except Exception:  # noqa: BLE001, S112 - the caller reports its own error
                    continue
                log.warning("etcd at %s is not answering (%s); switched to %s", url, reason, cand)
                self.current = (new, cand)
                metrics.ETCD.switched(cand)
                return True
        return False

    def authenticate(self, client: Client) -> None:
        o = self.opts
        resp = client.authstub.Authenticate(
            etcdrpc.AuthenticateRequest(name=o.username, password=o.password), o.timeout_s)
        client.metadata = (("token", resp.token),)

    def reauthenticate(self, client: Client) -> bool:
        """Fetch a fresh auth token into `client`; False when no credentials are configured.
        etcd's simple tokens expire after 5 idle minutes and etcd3 never renews them."""
        if self.opts.username is None or self.opts.password is None:
            return False
        try:
            self.authenticate(client)
        except grpc.RpcError as e:
            log.warning("re-authenticating to etcd at %s failed: %s", self.current[1], rpc_reason(e))
            return False
        log.info("re-authenticated to etcd at %s", self.current[1])
        return True

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
            self.current = (None, None)
        for c in clients:
            c.close()
