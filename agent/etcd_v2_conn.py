"""HTTP(S) to the etcd v2 keys API with the standard library only (agent/registry_v2.py is its
only user): the endpoints of one registry, the current one and the move to another, a deadline on
every request, TLS with a CA and a client certificate, basic auth.

flannel v0.6-v0.13 used the Go etcd v2 client (`subnet/etcdv2/registry.go`): the URL's scheme picks
http or https, a CA file and a client key pair apply to https, `-etcd-username/-etcd-password`
become basic auth on every request, and the client moves to another endpoint when one fails. So
does this module. A request is bounded as a whole: connect, send, the answer's head and its body
share one deadline, so a member that accepts connections and then says nothing (a hung process, a
dead link) costs at most that deadline before the next endpoint is tried.
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import metrics
from .errors import EtcdUnreachable, RegistryError
from .etcd_options import EtcdOptions, parse_endpoint

log = logging.getLogger("fastflannel.registry")

READ_CHUNK_BYTES = 1 << 16
MAX_BODY_BYTES = 64 << 20       # a listing of 10,000 leases is about 3 MB; refuse a runaway answer

# etcd v2 error codes (etcd's `error/error.go`, the same in the v2 emulation of etcd 3.x).
KEY_NOT_FOUND = 100
NODE_EXIST = 105
UNAUTHORIZED = 110
RAFT_INTERNAL = 300             # e.g. "etcdserver: request timed out": the member has no quorum
LEADER_ELECT = 301
EVENT_INDEX_CLEARED = 401       # the watch's waitIndex fell out of the 1,000 events etcd keeps


class NoAnswer(Exception):
    """The member did not answer: refused, reset, past the deadline, or it answered that it cannot
    serve (5xx, no leader). The request may still have been applied."""


@dataclass
class V2Response:
    status: int
    index: int | None           # X-Etcd-Index: the store's index when etcd answered
    body: Any                   # the decoded JSON, None when the answer was not JSON

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> int | None:
        if self.ok or not isinstance(self.body, dict):
            return None
        code = self.body.get("errorCode")
        return code if isinstance(code, int) else None

    def error_text(self) -> str:
        """etcd's error as the Go client prints it: `100: Key not found (/coreos.com) [3]`."""
        b = self.body if isinstance(self.body, dict) else {}
        if "errorCode" in b:
            return f"{b.get('errorCode')}: {b.get('message')} ({b.get('cause')}) [{b.get('index')}]"
        return f"HTTP {self.status}: {b.get('message') or 'no etcd error in the answer'}"

    @property
    def v2_served(self) -> bool:
        """False for etcd >= 3.4 started without --enable-v2: /v2/keys is a plain-text 404."""
        return self.ok or self.error_code is not None


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, (socket.timeout, TimeoutError)):
        text = "timed out"
    return " ".join(text.split())


class Exchange:
    """One request on its own connection; `read()` takes the body within the deadline. The socket
    is exposed so that another thread can end a blocked long poll at once (`abort`)."""

    def __init__(self, conn: http.client.HTTPConnection, deadline: float):
        self.conn = conn
        self.deadline = deadline
        self.sock: socket.socket | None = None
        self.resp: http.client.HTTPResponse | None = None

    def send(self, method: str, target: str, body: bytes | None, headers: dict[str, str]) -> None:
        self.conn.timeout = self._left()
        self.conn.request(method, target, body=body, headers=headers)
        self.sock = self.conn.sock
        if self.sock is not None:
            self.sock.settimeout(self._left())
        self.resp = self.conn.getresponse()

    def read(self, deadline: float | None = None) -> bytes:
        """The whole body before `deadline` (default: the request's); socket.timeout after it."""
        if deadline is not None:
            self.deadline = deadline
        assert self.resp is not None
        parts: list[bytes] = []
        total = 0
        while True:
            if self.sock is not None:
                self.sock.settimeout(self._left())
            chunk = self.resp.read1(READ_CHUNK_BYTES)
            if not chunk:
                if self.resp.length:            # Content-Length not reached: cut short
                    raise http.client.IncompleteRead(b"".join(parts))
                return b"".join(parts)
            total += len(chunk)
            if total > MAX_BODY_BYTES:
                raise http.client.HTTPException(f"answer larger than {MAX_BODY_BYTES} bytes")
            parts.append(chunk)

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        return left

    def abort(self) -> None:
        """From another thread: make a blocked read return at once."""
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.conn.close()


class EtcdV2Connection:
    """The endpoints of one v2 registry, the current one, and the move to another."""

    def __init__(self, opts: EtcdOptions, probe_path: str):
        self.opts = opts
        self._probe_path = probe_path
        self.current: str | None = None
        self._tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()           # one failover at a time
        auth = None
        if opts.username is not None:
            pair = f"{opts.username}:{opts.password or ''}".encode()
            auth = "Basic " + base64.b64encode(pair).decode()
        self._auth = auth

    # -- one request ----------------------------------------------------------------------------
    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            o = self.opts
            try:
                ctx = ssl.create_default_context(cafile=o.cafile or None)
                if o.certfile and o.keyfile:
                    ctx.load_cert_chain(o.certfile, o.keyfile)
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"cannot read the etcd TLS files: {_reason(e)}") from None
            self._tls = ctx
        return self._tls

    def open(self, url: str, method: str, path: str, params: Mapping[str, str] | None = None,
             form: Mapping[str, str] | None = None, timeout_s: float | None = None,
             before_send: Callable[[Exchange], None] | None = None) -> Exchange:
        """Send one request and wait for the answer's head (raises NoAnswer, or RegistryError for
        a TLS certificate that does not verify: a setup error, not an outage). `before_send` sees
        the exchange before any I/O, so another thread can abort it while it waits."""
        scheme, host, port = parse_endpoint(url)
        budget = self.opts.timeout_s if timeout_s is None else timeout_s
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=budget, context=self._tls_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=budget)
        target = urllib.parse.quote(path, safe="/")
        if params:
            target += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        if self._auth:
            headers["Authorization"] = self._auth
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        ex = Exchange(conn, time.monotonic() + budget)
        if before_send is not None:
            before_send(ex)
        try:
            ex.send(method, target, body, headers)
        except ssl.SSLCertVerificationError as e:
            ex.close()
            raise RegistryError(f"etcd at {url}: TLS certificate refused: {_reason(e)}") from None
        except (OSError, http.client.HTTPException) as e:
            ex.close()
            raise NoAnswer(_reason(e)) from None
        return ex

    def request(self, url: str, method: str, path: str, params: Mapping[str, str] | None = None,
                form: Mapping[str, str] | None = None) -> V2Response:
        """One whole request within opts.timeout_s. NoAnswer also for a 5xx or a no-leader error:
        another member may serve it."""
        ex = self.open(url, method, path, params, form)
        try:
            raw = ex.read()
        except (OSError, http.client.HTTPException) as e:
            raise NoAnswer(_reason(e)) from None
        finally:
            ex.close()
        assert ex.resp is not None
        return self.answer(ex.resp, raw)

    @staticmethod
    def answer(resp: http.client.HTTPResponse, raw: bytes) -> V2Response:
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            body = None
        idx = resp.getheader("X-Etcd-Index")
        r = V2Response(resp.status, int(idx) if idx and idx.isdigit() else None, body)
        if r.status >= 500 or r.error_code in (RAFT_INTERNAL, LEADER_ELECT):
            raise NoAnswer(r.error_text())
        if r.status == 401 or r.error_code == UNAUTHORIZED:
            raise RegistryError(f"etcd refused the credentials (-etcd-username/-etcd-password): "
                                f"{r.error_text()}")
        return r

    # -- endpoints ------------------------------------------------------------------------------
    def probe(self, url: str) -> None:
        """NoAnswer unless `url` serves the v2 keys API; RegistryError when it refuses us."""
        r = self.request(url, "GET", self._probe_path)
        if not r.v2_served:
            raise NoAnswer("it does not serve the etcd v2 API (etcd >= 3.4 needs --enable-v2=true)")

    def connect(self) -> None:
        """Use the first endpoint, in order, that answers; EtcdUnreachable if none does."""
        failures = []
        for url in self.opts.endpoints:
            try:
                self.probe(url)
            except NoAnswer as e:
                failures.append(f"{url}: {e}")
                continue
            self.current = url
            log.info("connected to etcd at %s (etcd v2 API)", url)
            return
        raise EtcdUnreachable("cannot reach etcd at " + "; ".join(failures))

    def failover(self, failed: str, reason: str) -> bool:
        """`failed` stopped answering: move to the next endpoint, in ring order, that answers.
        True when the current endpoint is now another one."""
        urls = self.opts.endpoints
        with self._lock:
            if self.current != failed:          # another thread has already moved on
                return self.current is not None
            if len(urls) < 2:
                return False
            i = urls.index(failed) if failed in urls else 0
            for cand in urls[i + 1:] + urls[:i]:
                try:
                    self.probe(cand)
                except (NoAnswer, RegistryError):
                    continue
                log.warning("etcd at %s is not answering (%s); switched to %s", failed, reason, cand)
                self.current = cand
                metrics.ETCD.switched(cand)
                return True
        return False
