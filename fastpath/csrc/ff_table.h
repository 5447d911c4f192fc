/* Route table: destination subnet -> peer (underlay IPv4 + UDP port).
 *
 * Open addressing with linear probing, power-of-two capacity, load <= 1/4 (misses that probe
 * several prefix lengths stay short: ~1.3 slots per length), murmur3 fmix32 on
 * (dst & mask, prefix). Several prefix lengths are supported: a lookup probes each length present,
 * longest first. Deletion shifts entries back (no tombstones).
 *
 * A table is mutated only while private to one writer; once published to workers (ff_fwd) it is
 * immutable. Addresses and ports are host byte order throughout this API.
 *
 * Each slot and each entry of the peer set carries a counter index (`pidx`), the route's row in
 * the forwarder's per-peer counters: the forwarder's writer assigns it (ff_peers.c) so that it
 * stays the same across table replacements; the table itself only stores it (0 = none).
 */
#ifndef FF_TABLE_H
#define FF_TABLE_H

#include <stddef.h>
#include <stdint.h>

struct ff_route {
    uint32_t net;        /* host order; masked to prefix on insert */
    uint8_t prefix;      /* 0..32 */
    uint32_t peer_ip;    /* host order */
    uint16_t peer_port;  /* host order */
};

struct ff_slot {
    uint32_t key;        /* net & mask */
    uint32_t peer_ip;
    uint16_t peer_port;
    uint8_t plen1;       /* prefix + 1; 0 = empty slot */
    uint8_t pad;
    uint32_t pidx;       /* per-peer counter index (ff_peers.c); 0 = none */
};

/* An entry of the peer set: a peer address and the counter index of one of its routes. */
struct ff_peer {
    uint32_t ip;         /* 0 = empty; 0.0.0.0 is never a valid peer */
    uint32_t pidx;
};

struct ff_table {
    uint32_t cap;               /* power of two */
    uint32_t count;
    uint32_t len_count[33];     /* routes per prefix length */
    uint8_t nlens;              /* number of distinct lengths present */
    uint8_t lens[33];           /* present lengths, longest first */
    uint32_t peer_cap;          /* power of two, 0 until ff_table_finalize */
    struct ff_peer *peers;      /* set of peer IPs, with a counter index each */
    struct ff_slot *slots;
};

int ff_table_new(struct ff_table **out, uint32_t expected);
void ff_table_free(struct ff_table *t);
/* Copy without the peer set (call ff_table_finalize before publishing). */
int ff_table_clone(const struct ff_table *t, struct ff_table **out);
/* Build from an array; a later duplicate (same net/prefix) wins. Finalized on success. */
int ff_table_build(const struct ff_route *routes, size_t n, struct ff_table **out);
int ff_table_insert(struct ff_table *t, const struct ff_route *r);           /* 0, -EINVAL, -ENOMEM */
int ff_table_remove(struct ff_table *t, uint32_t net, uint8_t prefix);      /* 0, -ENOENT, -EINVAL */
/* Rebuild the peer set; required before ff_table_has_peer. An address with several routes takes
 * the counter index of the first of them in slot order. 0 or -ENOMEM. */
int ff_table_finalize(struct ff_table *t);
/* Copy up to cap routes into out; returns the number copied. */
size_t ff_table_routes(const struct ff_table *t, struct ff_route *out, size_t cap);
/* Longest-prefix match; NULL when no route covers dst. */
const struct ff_slot *ff_table_lookup(const struct ff_table *t, uint32_t dst);
int ff_table_has_peer(const struct ff_table *t, uint32_t ip);
/* The counter index the peer set holds for ip; 0 when ip is no peer (or has no index). */
uint32_t ff_table_peer_index(const struct ff_table *t, uint32_t ip);
/* The slot of exactly net/prefix (not a longest-prefix match); NULL when absent. */
struct ff_slot *ff_table_get(const struct ff_table *t, uint32_t net, uint8_t prefix);
/* Longest probe sequence over all stored keys (1 = found in its home slot). */
uint32_t ff_table_max_probe(const struct ff_table *t);
/* Benchmark hook: n lookups cycling over dsts; returns the number of hits. */
uint64_t ff_table_bench(const struct ff_table *t, const uint32_t *dsts, size_t ndst, uint64_t n);

static inline uint32_t ff_fmix32(uint32_t h)
{
    /* murmur3 finalizer: full avalanche, so sequential subnets spread over the table */
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t ff_prefix_mask(uint8_t prefix)
{
    return prefix == 0 ? 0 : 0xffffffffu << (32 - prefix);
}

#endif
