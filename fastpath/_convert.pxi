# Conversions between Python values (dotted quads, CIDR strings, ROUTE_DTYPE arrays) and C.
import ipaddress as _ipaddress

import numpy as _np
cimport numpy as cnp
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free

from ff_table cimport ff_route

cnp.import_array()

#: Layout of one route in replace_routes()/routes(); integers in host order.
ROUTE_DTYPE = _np.dtype([("net", "<u4"), ("prefix", "u1"), ("peer_ip", "<u4"), ("peer_port", "<u2")])


cdef uint32_t _ip(object s) except? 0xffffffff:
    return int(_ipaddress.IPv4Address(s))


cdef tuple _subnet(object s):
    """(net, prefix) of a CIDR string; host bits set -> ValueError, as flannel subnets never have."""
    n = _ipaddress.IPv4Network(s)
    return int(n.network_address), n.prefixlen


cdef object _as_route_array(object arr):
    """Any buffer of ROUTE_DTYPE layout -> a numpy array of ROUTE_DTYPE."""
    a = _np.asarray(arr)
    if a.dtype == ROUTE_DTYPE:
        return a.reshape(-1)
    if a.dtype.names is not None:
        raise ValueError(f"routes must have dtype ROUTE_DTYPE, not {a.dtype}")
    raw = memoryview(arr).cast("B")
    if len(raw) % ROUTE_DTYPE.itemsize:
        raise ValueError(f"route buffer length {len(raw)} is not a multiple of {ROUTE_DTYPE.itemsize}")
    return _np.frombuffer(raw, dtype=ROUTE_DTYPE)


cdef ff_route *_routes_to_c(object arr, size_t *n) except NULL:
    """Copy a ROUTE_DTYPE array into a malloc'ed C array (caller frees)."""
    a = _as_route_array(arr)
    cdef uint32_t[::1] net = _np.ascontiguousarray(a["net"], dtype=_np.uint32)
    cdef uint8_t[::1] prefix = _np.ascontiguousarray(a["prefix"], dtype=_np.uint8)
    cdef uint32_t[::1] peer = _np.ascontiguousarray(a["peer_ip"], dtype=_np.uint32)
    cdef uint16_t[::1] port = _np.ascontiguousarray(a["peer_port"], dtype=_np.uint16)
    cdef size_t i, count = net.shape[0]
    cdef ff_route *out = <ff_route *>malloc((count if count else 1) * sizeof(ff_route))
    if out == NULL:
        raise MemoryError()
    for i in range(count):
        out[i].net = net[i]
        out[i].prefix = prefix[i]
        out[i].peer_ip = peer[i]
        out[i].peer_port = port[i]
    n[0] = count
    return out


cdef object _routes_from_c(const ff_route *r, size_t n):
    """C routes -> ROUTE_DTYPE array sorted by (net, prefix)."""
    out = _np.zeros(n, dtype=ROUTE_DTYPE)
    cdef uint32_t[:] net = out["net"]
    cdef uint8_t[:] prefix = out["prefix"]
    cdef uint32_t[:] peer = out["peer_ip"]
    cdef uint16_t[:] port = out["peer_port"]
    cdef size_t i
    for i in range(n):
        net[i] = r[i].net
        prefix[i] = r[i].prefix
        peer[i] = r[i].peer_ip
        port[i] = r[i].peer_port
    out.sort(order=["net", "prefix"])
    return out
