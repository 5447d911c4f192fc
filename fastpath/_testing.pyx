# cython: language_level=3, boundscheck=False, wraparound=False
"""Test and benchmark hooks of the fast path (a development build only, FASTFLANNEL_DEV=1).

The C route table and packet checks, callable from Python for the differential tests against
the Python twin (tests/support/reference.py), and nogil loops that time the C code alone. Not
part of the installed package: setup.py builds this module only in a development build.
"""
include "_errors.pxi"
include "_convert.pxi"

from libc.errno cimport ENOENT
from libc.string cimport memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from ff_table cimport (ff_table, ff_slot, ff_table_new, ff_table_free, ff_table_insert,
                       ff_table_remove, ff_table_finalize, ff_table_routes, ff_table_lookup,
                       ff_table_has_peer, ff_table_max_probe, ff_table_bench)
from ff_pkt cimport (ff_ip4_validate, ff_ip4_dec_ttl, ff_ip4_dst, ff_icmp_due, ff_icmp_net_unreach,
                     FF_ICMP_MAX_LEN, FF_IP4_OK, FF_IP4_SHORT, FF_IP4_BAD_HEADER, FF_IP4_BAD_LENGTH,
                     FF_TTL_OK, FF_TTL_EXPIRED)

#: ipv4_validate's verdicts (C enum ff_ip4_verdict).
PKT_OK = FF_IP4_OK
PKT_SHORT = FF_IP4_SHORT
PKT_BAD_HEADER = FF_IP4_BAD_HEADER
PKT_BAD_LENGTH = FF_IP4_BAD_LENGTH


cdef double _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1e9 + ts.tv_nsec


cdef class RouteTable:
    """The C route table alone (in-place insert/remove), for differential tests and benchmarks."""
    cdef ff_table *_t
    cdef bint _dirty        # peer set stale since the last mutation

    def __cinit__(self):
        _check(ff_table_new(&self._t, 0), "new table")
        self._dirty = False

    def __dealloc__(self):
        ff_table_free(self._t)

    def __len__(self):
        return self._t.count

    def insert(self, uint32_t net, uint8_t prefix, uint32_t peer_ip, uint16_t peer_port):
        cdef ff_route r
        r.net, r.prefix, r.peer_ip, r.peer_port = net, prefix, peer_ip, peer_port
        _check(ff_table_insert(self._t, &r), "insert")
        self._dirty = True

    def remove(self, uint32_t net, uint8_t prefix):
        rc = ff_table_remove(self._t, net, prefix)
        if rc == -ENOENT:
            raise KeyError((net, prefix))
        _check(rc, "remove")
        self._dirty = True

    def lookup(self, uint32_t dst):
        """(peer_ip, peer_port) of the longest matching prefix, or None."""
        cdef const ff_slot *s = ff_table_lookup(self._t, dst)
        return None if s == NULL else (s.peer_ip, s.peer_port)

    def has_peer(self, uint32_t ip):
        if self._dirty:
            _check(ff_table_finalize(self._t), "finalize")
            self._dirty = False
        return bool(ff_table_has_peer(self._t, ip))

    def routes(self):
        cdef size_t n = self._t.count
        cdef ff_route *r = <ff_route *>malloc((n if n else 1) * sizeof(ff_route))
        if r == NULL:
            raise MemoryError()
        try:
            return _routes_from_c(r, ff_table_routes(self._t, r, n))
        finally:
            free(r)

    def max_probe(self):
        return ff_table_max_probe(self._t)

    def bench_lookup(self, dsts, uint64_t n):
        """Time n lookups cycling over dsts (uint32 array), without the GIL; returns (ns_per_lookup, hits)."""
        cdef uint32_t[::1] d = _np().ascontiguousarray(dsts, dtype=_np().uint32)
        cdef uint64_t hits
        cdef double t0, t1
        if d.shape[0] == 0:
            raise ValueError("no destinations")
        with nogil:
            t0 = _now_ns()
            hits = ff_table_bench(self._t, &d[0], d.shape[0], n)
            t1 = _now_ns()
        return (t1 - t0) / n if n else 0.0, hits


cdef const uint8_t[::1] _bytes_view(object data):
    return memoryview(data).cast("B")


def ipv4_validate(data):
    """PKT_OK, PKT_SHORT, PKT_BAD_HEADER or PKT_BAD_LENGTH for a raw IPv4 packet."""
    cdef const uint8_t[::1] p = _bytes_view(data)
    cdef uint8_t dummy = 0
    return <int>ff_ip4_validate(&p[0] if p.shape[0] else &dummy, p.shape[0])


def ipv4_dec_ttl(data):
    """The packet with TTL-1 and its checksum patched, or None when it must be dropped (TTL <= 1)."""
    if ipv4_validate(data) != FF_IP4_OK:
        raise ValueError("not a valid IPv4 packet")
    out = bytearray(data)
    cdef uint8_t[::1] p = out
    if ff_ip4_dec_ttl(&p[0]) == FF_TTL_EXPIRED:
        return None
    return bytes(out)


def icmp_net_unreach(data, uint32_t tun_ip):
    """flannel's ICMP net-unreachable reply for the packet, or None when none is due."""
    cdef const uint8_t[::1] p = _bytes_view(data)
    cdef uint8_t out[FF_ICMP_MAX_LEN]
    cdef uint8_t dummy = 0
    cdef const uint8_t *pkt = &p[0] if p.shape[0] else &dummy
    cdef int k = ff_icmp_net_unreach(pkt, p.shape[0], tun_ip, out, sizeof(out))
    _check(k, "icmp")
    return bytes(out[:k]) if ff_icmp_due(pkt) else None


cdef int _transform_loop(const ff_table *t, uint8_t *buf, const uint8_t *pkt, size_t len,
                         uint64_t n) noexcept nogil:
    """The per-packet tun->udp work (copy in, validate, look up, TTL-1); returns the packets kept."""
    cdef uint64_t i
    cdef int kept = 0
    for i in range(n):
        memcpy(buf, pkt, 20)
        if ff_ip4_validate(buf, len) != FF_IP4_OK:
            continue
        if ff_table_lookup(t, ff_ip4_dst(buf)) == NULL:
            continue
        kept += ff_ip4_dec_ttl(buf) == FF_TTL_OK
    return kept


def bench_transform(RouteTable table, data, uint64_t n):
    """ns per packet for validate + lookup + TTL-1 on `data` (header copied fresh each time)."""
    cdef bytearray b = bytearray(data)
    cdef uint8_t[::1] buf = b
    cdef const uint8_t[::1] pkt = _bytes_view(bytes(data))
    cdef double t0, t1
    cdef int kept
    if len(b) < 20:
        raise ValueError("packet too short")
    with nogil:
        t0 = _now_ns()
        kept = _transform_loop(table._t, &buf[0], &pkt[0], pkt.shape[0], n)
        t1 = _now_ns()
    return (t1 - t0) / n if n else 0.0, kept
