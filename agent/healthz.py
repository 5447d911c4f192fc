"""flanneld's health endpoints (docs/flannel-compat.md §"Health endpoints"): exact paths, any method,
plain-text bodies; and fastflannel's own, on the same server:

    /stats     the fast path's counters as JSON (udp backend; `{}` otherwise)
    /metrics   Prometheus text format (agent/metrics.py), built when scraped
    /status    the daemon's status as JSON, what `fastflannel status` shows (agent/status.py)

The same handler serves the health port (`-healthz-port`, TCP) and the status socket, a unix
socket in the run dir that is always on (`StatusSocket`, docs/architecture.md §"Observability").
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable, Optional, Protocol

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("fastflannel")

SOCKET_MODE = 0o600        # the status socket: root only (it tells peers, counters, the etcd endpoint)


class Endpoints(Protocol):
    def ready(self) -> bool: ...

    def stats(self) -> dict: ...

    def metrics(self) -> bytes: ...

    def status(self) -> dict: ...


class DaemonEndpoints:
    """The endpoints of a running Daemon; metrics and status are taken when asked for."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def ready(self) -> bool:
        return self.daemon.ready

    def stats(self) -> dict:
        be = self.daemon.backend
        return be.stats() if be is not None else {}

    def metrics(self) -> bytes:
        from .metrics import render
        from .status import collect_state
        return render(collect_state(self.daemon))

    def status(self) -> dict:
        from .status import collect_state, status_doc
        return status_doc(collect_state(self.daemon))


def _route(ep: Endpoints, path: str) -> tuple:
    """(code, content type, body) for one request path."""
    text = "text/plain; charset=utf-8"
    if path == "/healthz":
        return 200, text, b"flanneld is running"
    if path == "/readyz":
        return (200, text, b"flanneld is ready") if ep.ready() else (503, text, b"flanneld is not ready yet")
    if path == "/stats":
        return 200, text, json.dumps(ep.stats(), sort_keys=True).encode()
    if path == "/metrics":
        from .metrics import CONTENT_TYPE
        return 200, CONTENT_TYPE, ep.metrics()
    if path == "/status":
        return 200, "application/json", json.dumps(ep.status()).encode()     # keys in their order
    return 404, text, b"404 page not found"


def _handler(ep: Endpoints):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            try:
                code, ctype, data = _route(ep, self.path)
            except Exception as e:  # noqa: BLE001 - one bad scrape must not kill the server thread
                log.warning("%s failed: %s", self.path, e)
                code, ctype, data = 500, "text/plain; charset=utf-8", f"{self.path}: {e}".encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        # flannel registers plain handlers: no method check.
        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def address_string(self) -> str:      # a unix socket's peer has no address
            return str(self.client_address[0]) if self.client_address else "unix"

        def log_message(self, *args) -> None:  # keep the daemon log quiet
            pass

    return Handler


class HealthServer:
    def __init__(self, ip: str, port: int, endpoints: Endpoints):
        self.server = ThreadingHTTPServer((ip, port), _handler(endpoints))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="healthz", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class StatusSocket:
    """The handler on a unix socket at `path` (mode 0600). A stale socket file left by a daemon
    that died is replaced; one a live daemon answers on is left alone (OSError EADDRINUSE)."""

    def __init__(self, path: str, endpoints: Endpoints):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        _remove_stale(path)
        old = os.umask(0o177)                 # born 0600: no window in which others may connect
        try:
            self.server = _UnixServer(path, _handler(endpoints))
        finally:
            os.umask(old)
        os.chmod(path, SOCKET_MODE)
        self._ino = os.stat(path).st_ino
        self.thread = threading.Thread(target=self.server.serve_forever, name="status-socket", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:                                  # only our own file: a successor may have replaced it
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)                       # nobody listens: a dead daemon's socket
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another daemon answers on {path}")


def start_status_socket(path: str, endpoints: Endpoints,
                        warn: Callable[[str], None] = log.warning) -> Optional[StatusSocket]:
    """The status socket, started; None (with a warning) when it cannot be made: the daemon
    forwards without it."""
    try:
        s = StatusSocket(path, endpoints)
    except OSError as e:
        warn(f"no status socket at {path} (fastflannel status will not find this daemon): {e}")
        return None
    s.start()
    return s
