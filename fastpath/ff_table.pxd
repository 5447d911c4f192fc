# C declarations for csrc/ff_table.h (route table); no logic here.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "ff_table.h" nogil:
    struct ff_route:
        uint32_t net
        uint8_t prefix
        uint32_t peer_ip
        uint16_t peer_port

    struct ff_slot:
        uint32_t peer_ip
        uint16_t peer_port

    struct ff_table:
        uint32_t count

    int ff_table_new(ff_table **out, uint32_t expected)
    void ff_table_free(ff_table *t)
    int ff_table_insert(ff_table *t, const ff_route *r)
    int ff_table_remove(ff_table *t, uint32_t net, uint8_t prefix)
    int ff_table_finalize(ff_table *t)
    size_t ff_table_routes(const ff_table *t, ff_route *out, size_t cap)
    const ff_slot *ff_table_lookup(const ff_table *t, uint32_t dst)
    int ff_table_has_peer(const ff_table *t, uint32_t ip)
    uint32_t ff_table_max_probe(const ff_table *t)
    uint64_t ff_table_bench(const ff_table *t, const uint32_t *dsts, size_t ndst, uint64_t n)
