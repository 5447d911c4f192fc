"""fastflannel data plane: the C fast path (csrc/) behind a Cython Forwarder.

    from fastflannel.fastpath import Forwarder, ROUTE_DTYPE
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
    PEER_DTYPE,
    PEER_MAX,
    PEER_STAT_NAMES,
    ROUTE_DTYPE,
    STAT_NAMES,
    UNKNOWN_SENDERS_MAX,
    Forwarder,
)

__all__ = ["Forwarder", "OFFLOAD_PARTS", "MAX_WORKERS", "ROUTE_DTYPE", "STAT_NAMES", "DROP_REASONS",
           "DEFAULT_PORT", "DEFAULT_BATCH", "PEER_DTYPE", "PEER_STAT_NAMES", "PEER_MAX", "UNKNOWN_SENDERS_MAX"]
