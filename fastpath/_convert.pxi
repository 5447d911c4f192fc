# Conversions between Python values (dotted quads, CIDR strings, route tables) and C.
#
# numpy is imported only where arrays cross this boundary: ROUTE_DTYPE, routes() and stats_array()
# (tests, tools). The agent hands replace_routes() packed bytes of the same layout and never loads
# numpy (its import alone is ~14 MiB of RSS; docs/fastpath.md §"The agent's boundary").
import ipaddress as _ipaddress

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free

from ff_table cimport ff_route

#: Bytes of one route in ROUTE_DTYPE's packed layout: net <u4, prefix u1, peer_ip <u4, peer_port <u2.
ROUTE_ITEMSIZE = 11

cdef object _np_module = None
cdef object _route_dtype = None


cdef object _np():
    global _np_module
    if _np_module is None:
        import numpy
        _np_module = numpy
    return _np_module


def route_dtype():
    """ROUTE_DTYPE (numpy is imported on the first call)."""
    global _route_dtype
    if _route_dtype is None:
        _route_dtype = _np().dtype([("net", "<u4"), ("prefix", "u1"), ("peer_ip", "<u4"), ("peer_port", "<u2")])
    return _route_dtype


def pack_route(uint32_t net, uint8_t prefix, uint32_t peer_ip, uint16_t peer_port):
    """One route as ROUTE_ITEMSIZE bytes (host-order integers in, ROUTE_DTYPE's layout out)."""
    cdef unsigned char b[11]
    _put_le(b, 0, net, 4)
    b[4] = prefix
    _put_le(b, 5, peer_ip, 4)
    _put_le(b, 9, peer_port, 2)
    return (<char *>b)[:11]


cdef inline void _put_le(unsigned char *b, size_t off, uint32_t v, int n) noexcept:
    cdef int i
    for i in range(n):
        b[off + i] = (v >> (8 * i)) & 0xff


cdef inline uint32_t _get_le(const unsigned char *b, size_t off, int n) noexcept:
    cdef uint32_t v = 0
    cdef int i
    for i in range(n):
        v |= (<uint32_t>b[off + i]) << (8 * i)
    return v


cdef uint32_t _ip(object s) except? 0xffffffff:
    return int(_ipaddress.IPv4Address(s))


cdef tuple _subnet(object s):
    """(net, prefix) of a CIDR string; host bits set -> ValueError, as flannel subnets never have."""
    n = _ipaddress.IPv4Network(s)
    return int(n.network_address), n.prefixlen


cdef object _route_bytes(object arr):
    """A route table as packed bytes: bytes-like objects as they are, numpy arrays of ROUTE_DTYPE
    (or of plain bytes) through numpy."""
    if isinstance(arr, (bytes, bytearray, memoryview)) or not hasattr(arr, "dtype"):
        raw = memoryview(arr).cast("B")
    else:
        if arr.dtype.names is not None and arr.dtype != route_dtype():
            raise ValueError(f"routes must have dtype ROUTE_DTYPE, not {arr.dtype}")
        raw = memoryview(_np().ascontiguousarray(arr).reshape(-1).tobytes())
    if len(raw) % ROUTE_ITEMSIZE:
        raise ValueError(f"route buffer length {len(raw)} is not a multiple of {ROUTE_ITEMSIZE}")
    return raw


cdef ff_route *_routes_to_c(object arr, size_t *n) except NULL:
    """Copy a route table (see _route_bytes) into a malloc'ed C array (caller frees)."""
    cdef const unsigned char[::1] raw = _route_bytes(arr)
    cdef size_t i, o, count = raw.shape[0] // ROUTE_ITEMSIZE
    cdef ff_route *out = <ff_route *>malloc((count if count else 1) * sizeof(ff_route))
    if out == NULL:
        raise MemoryError()
    for i in range(count):
        o = i * ROUTE_ITEMSIZE
        out[i].net = _get_le(&raw[0], o, 4)
        out[i].prefix = raw[o + 4]
        out[i].peer_ip = _get_le(&raw[0], o + 5, 4)
        out[i].peer_port = <uint16_t>_get_le(&raw[0], o + 9, 2)
    n[0] = count
    return out


cdef object _routes_from_c(const ff_route *r, size_t n):
    """C routes -> ROUTE_DTYPE array sorted by (net, prefix)."""
    out = _np().zeros(n, dtype=route_dtype())
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
