"""fastflannel data plane: the C fast path (csrc/) behind a Cython Forwarder, and its Python twin.

    from fastflannel.fastpath import Forwarder, ROUTE_DTYPE
    with Forwarder() as fw:
        fw.open(tun="flannel%d", bind_ip="192.0.2.10", port=8285, tun_ip="10.10.0.0")
        fw.start()
        fw.add_route("10.10.16.0/20", "192.0.2.11", 8285)
"""
from ._fastpath import (  # noqa: F401
    DEFAULT_BATCH,
    DEFAULT_PORT,
    MAX_WORKERS,
    OFFLOAD_PARTS,
    PKT_BAD_HEADER,
    PKT_BAD_LENGTH,
    PKT_OK,
    PKT_SHORT,
    ROUTE_DTYPE,
    STAT_NAMES,
    Forwarder,
    RouteTable,
    bench_transform,
    icmp_net_unreach,
    ipv4_dec_ttl,
    ipv4_validate,
)

__all__ = ["Forwarder", "OFFLOAD_PARTS", "MAX_WORKERS", "ROUTE_DTYPE", "STAT_NAMES", "DEFAULT_PORT", "DEFAULT_BATCH", "RouteTable",
           "ipv4_validate", "ipv4_dec_ttl", "icmp_net_unreach", "bench_transform",
           "PKT_OK", "PKT_SHORT", "PKT_BAD_HEADER", "PKT_BAD_LENGTH"]
