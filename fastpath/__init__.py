"""fastflannel data plane: the C fast path (csrc/) behind a Cython Forwarder.

    from fastflannel.fastpath import Forwarder, pack_route
    with Forwarder() as fw:
        fw.open(tun="flannel%d", bind_ip="192.0.2.10", port=8285, tun_ip="10.10.0.0")
        fw.start()
        fw.add_route("10.10.16.0/20", "192.0.2.11", 8285)

Design, counters and measured numbers: docs/fastpath.md. The test and benchmark hooks are the
separate module fastflannel.fastpath._testing, built only in a development build
(FASTFLANNEL_DEV=1).
"""
from ._fastpath import (  # noqa: F401
    DEFAULT_BATCH,
    DEFAULT_PORT,
    DROP_REASONS,
    MAX_WORKERS,
    OFFLOAD_PARTS,
    PEER_MAX,
    PEER_STAT_NAMES,
    ROUTE_ITEMSIZE,
    STAT_NAMES,
    UNKNOWN_SENDERS_MAX,
    Forwarder,
    pack_route,
    series_columns,
)

__all__ = ["Forwarder", "OFFLOAD_PARTS", "MAX_WORKERS", "ROUTE_DTYPE", "ROUTE_ITEMSIZE", "STAT_NAMES",
           "DROP_REASONS", "DEFAULT_PORT", "DEFAULT_BATCH", "pack_route", "PEER_DTYPE", "PEER_STAT_NAMES",
           "PEER_MAX", "UNKNOWN_SENDERS_MAX", "series_columns"]


def __getattr__(name: str):
    # The dtypes are numpy objects: made (and numpy imported) only when someone asks for them, so
    # the agent, which passes packed bytes (pack_route), loads numpy only when /metrics is scraped.
    if name == "ROUTE_DTYPE":
        from ._fastpath import route_dtype
        return route_dtype()
    if name == "PEER_DTYPE":
        from ._fastpath import peer_dtype
        return peer_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
