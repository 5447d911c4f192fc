"""flanneld's health endpoints (docs/flannel-compat.md §"Health endpoints"): exact paths, any method, plain-text bodies.

fastflannel adds `/stats`: the fast path's counters as JSON (udp backend; `{}` otherwise).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional


def _handler(is_ready: Callable[[], bool], stats: Callable[[], dict]):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.path == "/healthz":
                code, body = 200, "flanneld is running"
            elif self.path == "/readyz":
                code, body = (200, "flanneld is ready") if is_ready() else (503, "flanneld is not ready yet")
            elif self.path == "/stats":
                code, body = 200, json.dumps(stats(), sort_keys=True)
            else:
                code, body = 404, "404 page not found"
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        # flannel registers plain handlers: no method check.
        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        def log_message(self, *args) -> None:  # keep the daemon log quiet
            pass

    return Handler


class HealthServer:
    def __init__(self, ip: str, port: int, is_ready: Callable[[], bool],
                 stats: Optional[Callable[[], dict]] = None):
        self.server = ThreadingHTTPServer((ip, port), _handler(is_ready, stats or dict))
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
