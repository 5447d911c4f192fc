"""What a registry needs to reach etcd: endpoints, prefix, TLS files, credentials, deadline.

Shared by the v3 registry (agent/registry.py, agent/etcd_conn.py) and the v2 one
(agent/registry_v2.py); it imports nothing heavy, so a daemon on the etcd v2 store never loads
grpc or etcd3 (docs/architecture.md §"The registry contract").
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from .errors import RegistryError

ETCD_CLIENT_PORT = 2379


@dataclass
class EtcdOptions:
    endpoints: list[str] = field(
        default_factory=lambda: ["http://127.0.0.1:4001", "http://127.0.0.1:2379"])
    prefix: str = "/coreos.com/network"
    keyfile: str | None = None
    certfile: str | None = None
    cafile: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: float = 5.0       # every request's deadline, and the least a connection attempt gets


def parse_endpoint(url: str) -> tuple[str, str, int]:
    """`https://host:port` -> (scheme, host, port); etcd's client port when none is given."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"bad etcd endpoint {url!r}: want http(s)://host:port")
    try:
        port = parts.port or ETCD_CLIENT_PORT
    except ValueError:
        raise RegistryError(f"bad etcd endpoint {url!r}: bad port") from None
    return parts.scheme, parts.hostname, port
