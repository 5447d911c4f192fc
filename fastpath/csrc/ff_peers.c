/* Per-peer counters (docs/fastpath.md §"Per-peer counters"): the writer's index allocation, the
 * workers' counting helpers, and the reads.
 *
 * Every route has a counter index (its row); each worker has its own rows and counts into them
 * with plain stores, and a read sums the rows over the workers. Indices are the writer's
 * business: a route keeps its index across table replacements while its subnet and peer address
 * stay the same, so peers come and go without touching the others' counts. An index the new
 * table no longer uses is zeroed and becomes free only once no worker can still count into it:
 * the udp->tun side counts inside its epoch section (publish() waits for it), the tun->udp side
 * until its last send, past read_unlock, which its `busy` counter covers. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ff_fwd_int.h"

const char *const ff_peer_stat_names[FF_PS__COUNT] = {
    "tx_packets", "tx_bytes", "tx_dropped", "rx_packets", "rx_bytes", "rx_spoofed",
    "rx_dst_special", "rx_dst_foreign", "rx_dropped", "last_rx_ns",
};

uint64_t ff_coarse_now_ns(void)
{
    struct timespec ts;

    /* the vDSO's coarse clock: a few ns per call, ticks of a jiffy (a "last seen" needs no more) */
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- chunks and indices (writer) ------------------------------------------------------------ */
/* Chunk c for every worker; a worker's pdir[c] is read only for indices of a table published
 * after this (the table's release store orders it). */
static int add_chunk(struct ff_fwd *fw)
{
    uint32_t c = fw->peer_chunks;

    if (c >= FF_PEER_CHUNKS)
        return -ENOSPC;
    for (uint32_t i = 0; i < fw->nw; i++) {
        struct ff_peer_row *rows;
        if (fw->w[i].pdir[c])
            continue;            /* given by an earlier attempt that ran out of memory */
        rows = aligned_alloc(64, sizeof(*rows) * FF_PEER_CHUNK);
        if (!rows)
            return -ENOMEM;      /* the chunks given so far stay for the next attempt (or close) */
        memset(rows, 0, sizeof(*rows) * FF_PEER_CHUNK);
        fw->w[i].pdir[c] = rows;
    }
    fw->peer_chunks = c + 1;
    return 0;
}

int ff_peers_open(struct ff_fwd *fw)
{
    fw->peer_used[0] = 1;        /* index 0: the shared row of routes without one */
    return add_chunk(fw);
}

void ff_peers_close(struct ff_fwd *fw)
{
    for (uint32_t i = 0; i < fw->nw; i++)
        for (uint32_t c = 0; c < FF_PEER_CHUNKS; c++) {
            free(fw->w[i].pdir[c]);
            fw->w[i].pdir[c] = NULL;
        }
    fw->peer_chunks = 0;
}

/* The lowest free index, its chunk allocated in every worker; 0 when none is left or memory for
 * a chunk is not (the route is then counted in the totals only, and gets an index at a later
 * update). */
static uint32_t alloc_index(struct ff_fwd *fw)
{
    for (uint32_t wi = fw->peer_hint; wi < FF_PEER_MAX / 64; wi++) {
        uint64_t free_bits = ~fw->peer_used[wi];
        uint32_t idx;
        if (!free_bits)
            continue;
        fw->peer_hint = wi;
        idx = wi * 64 + (uint32_t)__builtin_ctzll(free_bits);
        while ((idx >> FF_PEER_CHUNK_SHIFT) >= fw->peer_chunks)
            if (add_chunk(fw) < 0)
                return 0;
        fw->peer_used[wi] |= 1ull << (idx & 63);
        return idx;
    }
    fw->peer_hint = FF_PEER_MAX / 64;
    return 0;
}

static void free_index(struct ff_fwd *fw, uint32_t idx)
{
    for (uint32_t i = 0; i < fw->nw; i++)
        memset(ff_peer_ctrs(&fw->w[i], idx), 0, sizeof(struct ff_peer_row));
    fw->peer_used[idx / 64] &= ~(1ull << (idx & 63));
    if (idx / 64 < fw->peer_hint)
        fw->peer_hint = idx / 64;
}

/* The index old gave the same route (same subnet, same peer address), or 0. */
static uint32_t inherited(const struct ff_table *old, const struct ff_slot *s)
{
    const struct ff_slot *o;

    if (!old)
        return 0;
    o = ff_table_get(old, s->key, (uint8_t)(s->plen1 - 1));
    return o && o->peer_ip == s->peer_ip ? o->pidx : 0;
}

int ff_peers_assign(struct ff_fwd *fw, struct ff_table *nt, const struct ff_table *old)
{
    /* first what carries over, so a fresh index never takes one a later slot inherits */
    for (uint32_t i = 0; i < nt->cap; i++)
        if (nt->slots[i].plen1)
            nt->slots[i].pidx = inherited(old, &nt->slots[i]);
    for (uint32_t i = 0; i < nt->cap; i++)
        if (nt->slots[i].plen1 && !nt->slots[i].pidx)
            nt->slots[i].pidx = alloc_index(fw);
    return ff_table_finalize(nt);
}

/* ---- release (writer) ----------------------------------------------------------------------- */
static bool still_used(const struct ff_table *nt, const struct ff_slot *s)
{
    const struct ff_slot *n = ff_table_get(nt, s->key, (uint8_t)(s->plen1 - 1));

    return n && n->pidx == s->pidx;
}

/* Wait until every tun->udp batch that may have read a table before now has sent its last
 * packet: the pairing of read_lock (busy store, fence, table load) with this (the new table
 * stored by publish, fence, busy load). A worker idle in poll is even and never waited for. */
static void wait_quiescent(struct ff_fwd *fw)
{
    struct timespec ts = {0, 20000};

    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (uint32_t i = 0; i < fw->nw; i++) {
        uint64_t b = __atomic_load_n(&fw->w[i].busy, __ATOMIC_ACQUIRE);
        if (!(b & 1))
            continue;
        while (__atomic_load_n(&fw->w[i].busy, __ATOMIC_ACQUIRE) == b)
            nanosleep(&ts, NULL);
    }
}

void ff_peers_release(struct ff_fwd *fw, const struct ff_table *old, const struct ff_table *nt)
{
    bool waited = false;

    if (!old)
        return;
    for (uint32_t i = 0; i < old->cap; i++) {
        const struct ff_slot *s = &old->slots[i];
        if (!s->plen1 || !s->pidx || still_used(nt, s))
            continue;
        if (!waited) {
            wait_quiescent(fw);
            waited = true;
        }
        free_index(fw, s->pidx);
    }
}

/* ---- counting (workers) --------------------------------------------------------------------- */
static void count_unknown(struct ff_worker *w, uint32_t sender, uint64_t n)
{
    struct ff_unknown *u = &w->unk;

    for (uint32_t i = 0; i < FF_UNKNOWN_SENDERS; i++) {
        if (u->ip[i] == sender && sender) {
            PEER_ADD(u->packets, i, n);
            return;
        }
        if (!u->ip[i] && sender) {
            /* the count before the address: a reader that sees the address sees its count */
            __atomic_store_n(&u->packets[i], n, __ATOMIC_RELAXED);
            __atomic_store_n(&u->ip[i], sender, __ATOMIC_RELEASE);
            return;
        }
    }
    __atomic_store_n(&u->other, u->other + n, __ATOMIC_RELAXED);
}

void ff_peers_count_rx(struct ff_worker *w, const struct ff_table *t, uint32_t sender,
                       const struct ff_rx_tally *tl)
{
    uint64_t *c;

    if (tl->unknown)
        count_unknown(w, sender, tl->unknown);
    if (!(tl->packets | tl->spoofed | tl->dst_special | tl->dst_foreign | tl->dropped))
        return;
    c = ff_peer_ctrs(w, ff_table_peer_index(t, sender));
    if (tl->packets) {
        PEER_ADD(c, FF_PS_RX_PACKETS, tl->packets);
        PEER_ADD(c, FF_PS_RX_BYTES, tl->bytes);
        __atomic_store_n(&c[FF_PS_LAST_RX_NS], w->now_ns, __ATOMIC_RELAXED);
    }
    if (tl->spoofed)
        PEER_ADD(c, FF_PS_RX_SPOOFED, tl->spoofed);
    if (tl->dst_special)
        PEER_ADD(c, FF_PS_RX_DST_SPECIAL, tl->dst_special);
    if (tl->dst_foreign)
        PEER_ADD(c, FF_PS_RX_DST_FOREIGN, tl->dst_foreign);
    if (tl->dropped)
        PEER_ADD(c, FF_PS_RX_DROPPED, tl->dropped);
}

void ff_count_fallback(struct ff_worker *w, uint32_t part)
{
    int i = __builtin_ctz(part) - __builtin_ctz(FF_F_TUN_TSO);   /* TUN_TSO..TCP_GRO: 0..3 */

    STAT_ADD(w, FF_ST_OFFLOAD_FALLBACKS, 1);
    if (i >= 0 && i < FF_OFFLOAD_NPARTS)
        __atomic_store_n(&w->fallbacks[i], w->fallbacks[i] + 1, __ATOMIC_RELAXED);
}

/* ---- reads ---------------------------------------------------------------------------------- */
static void sum_row(const struct ff_fwd *fw, uint32_t pidx, uint64_t v[FF_PS__COUNT])
{
    memset(v, 0, sizeof(uint64_t) * FF_PS__COUNT);
    for (uint32_t i = 0; i < fw->nw; i++) {
        const uint64_t *c = ff_peer_ctrs(&fw->w[i], pidx);
        for (int k = 0; k < FF_PS__COUNT; k++) {
            uint64_t x = __atomic_load_n(&c[k], __ATOMIC_RELAXED);
            if (k == FF_PS_LAST_RX_NS)
                v[k] = x > v[k] ? x : v[k];
            else
                v[k] += x;
        }
    }
}

long ff_fwd_peer_stats(struct ff_fwd *fw, struct ff_peer_stats *out, size_t cap)
{
    const struct ff_table *t;
    size_t n = 0;
    long count;

    pthread_mutex_lock(&fw->wlock);
    t = fw->table;
    count = (long)t->count;
    for (uint32_t i = 0; i < t->cap && n < cap; i++) {
        const struct ff_slot *s = &t->slots[i];
        if (!s->plen1)
            continue;
        out[n].route = (struct ff_route){s->key, (uint8_t)(s->plen1 - 1), s->peer_ip, s->peer_port};
        out[n].pidx = s->pidx;
        if (s->pidx)
            sum_row(fw, s->pidx, out[n].v);
        else
            memset(out[n].v, 0, sizeof(out[n].v));
        n++;
    }
    pthread_mutex_unlock(&fw->wlock);
    return count;
}

/* Add (ip, packets) to the merged list out[0..*n) of capacity cap, or to *other when full. */
static void merge_sender(struct ff_sender_stats *out, size_t cap, long *n, uint32_t ip,
                         uint64_t packets, uint64_t *other)
{
    for (long j = 0; j < *n; j++)
        if (out[j].ip == ip) {
            out[j].packets += packets;
            return;
        }
    if ((size_t)*n < cap) {
        out[*n] = (struct ff_sender_stats){ip, packets};
        (*n)++;
    } else {
        *other += packets;
    }
}

long ff_fwd_unknown_senders(const struct ff_fwd *fw, struct ff_sender_stats *out, size_t cap,
                            uint64_t *other)
{
    long n = 0;

    for (uint32_t i = 0; i < fw->nw; i++) {
        const struct ff_unknown *u = &fw->w[i].unk;
        for (uint32_t k = 0; k < FF_UNKNOWN_SENDERS; k++) {
            uint32_t ip = __atomic_load_n(&u->ip[k], __ATOMIC_ACQUIRE);
            if (ip)
                merge_sender(out, cap, &n, ip, __atomic_load_n(&u->packets[k], __ATOMIC_RELAXED),
                             other);
        }
        *other += __atomic_load_n(&u->other, __ATOMIC_RELAXED);
    }
    return n;
}

void ff_fwd_fallbacks(const struct ff_fwd *fw, uint64_t out[FF_OFFLOAD_NPARTS])
{
    memset(out, 0, sizeof(uint64_t) * FF_OFFLOAD_NPARTS);
    for (uint32_t i = 0; i < fw->nw; i++)
        for (int k = 0; k < FF_OFFLOAD_NPARTS; k++)
            out[k] += __atomic_load_n(&fw->w[i].fallbacks[k], __ATOMIC_RELAXED);
}
