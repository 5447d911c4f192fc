/* Route table (see ff_table.h). */
#include "ff_table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define FF_TABLE_MIN_CAP 16u

static inline uint32_t slot_hash(uint32_t key, uint8_t plen1)
{
    return ff_fmix32(key ^ ((uint32_t)plen1 * 0x9e3779b1u));
}

static uint32_t cap_for(uint32_t n)
{
    uint32_t cap = FF_TABLE_MIN_CAP;
    while (cap < 4u * n && cap < (1u << 30))
        cap <<= 1;
    return cap;
}

int ff_table_new(struct ff_table **out, uint32_t expected)
{
    struct ff_table *t;

    if (expected > (1u << 28))
        return -E2BIG;
    t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->cap = cap_for(expected);
    t->slots = calloc(t->cap, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return -ENOMEM;
    }
    *out = t;
    return 0;
}

void ff_table_free(struct ff_table *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t->peers);
    free(t);
}

int ff_table_clone(const struct ff_table *t, struct ff_table **out)
{
    struct ff_table *c = malloc(sizeof(*c));

    if (!c)
        return -ENOMEM;
    *c = *t;
    c->peers = NULL;
    c->peer_cap = 0;
    c->slots = malloc((size_t)t->cap * sizeof(*t->slots));
    if (!c->slots) {
        free(c);
        return -ENOMEM;
    }
    memcpy(c->slots, t->slots, (size_t)t->cap * sizeof(*t->slots));
    *out = c;
    return 0;
}

static void rebuild_lens(struct ff_table *t)
{
    t->nlens = 0;
    for (int l = 32; l >= 0; l--)
        if (t->len_count[l])
            t->lens[t->nlens++] = (uint8_t)l;
}

/* Place a slot known to be absent; capacity must allow it. */
static void place(struct ff_slot *slots, uint32_t cap, const struct ff_slot *s)
{
    uint32_t m = cap - 1, i = slot_hash(s->key, s->plen1) & m;

    while (slots[i].plen1)
        i = (i + 1) & m;
    slots[i] = *s;
}

static int grow(struct ff_table *t)
{
    uint32_t ncap = t->cap << 1;
    struct ff_slot *ns;

    if (ncap == 0 || ncap > (1u << 30))
        return -E2BIG;
    ns = calloc(ncap, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->cap; i++)
        if (t->slots[i].plen1)
            place(ns, ncap, &t->slots[i]);
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    return 0;
}

static int32_t find(const struct ff_table *t, uint32_t key, uint8_t plen1)
{
    uint32_t m = t->cap - 1, i = slot_hash(key, plen1) & m;

    for (;;) {
        const struct ff_slot *s = &t->slots[i];
        if (!s->plen1)
            return -1;
        if (s->key == key && s->plen1 == plen1)
            return (int32_t)i;
        i = (i + 1) & m;
    }
}

int ff_table_insert(struct ff_table *t, const struct ff_route *r)
{
    struct ff_slot s;
    int32_t i;
    int rc;

    if (r->prefix > 32)
        return -EINVAL;
    s.key = r->net & ff_prefix_mask(r->prefix);
    s.plen1 = (uint8_t)(r->prefix + 1);
    s.peer_ip = r->peer_ip;
    s.peer_port = r->peer_port;
    s.pad = 0;
    s.pidx = 0;          /* the forwarder's writer assigns it (ff_peers.c) */
    i = find(t, s.key, s.plen1);
    if (i >= 0) {
        t->slots[i] = s;
        return 0;
    }
    if (4u * (t->count + 1) > t->cap && (rc = grow(t)) < 0)
        return rc;
    place(t->slots, t->cap, &s);
    t->count++;
    if (t->len_count[r->prefix]++ == 0)
        rebuild_lens(t);
    return 0;
}

int ff_table_remove(struct ff_table *t, uint32_t net, uint8_t prefix)
{
    uint32_t m = t->cap - 1, i, j;
    int32_t f;

    if (prefix > 32)
        return -EINVAL;
    f = find(t, net & ff_prefix_mask(prefix), (uint8_t)(prefix + 1));
    if (f < 0)
        return -ENOENT;
    /* Backward-shift deletion: move later members of the cluster into the hole when their
     * home slot does not lie cyclically in (hole, j]. */
    i = (uint32_t)f;
    j = i;
    for (;;) {
        uint32_t k;
        j = (j + 1) & m;
        if (!t->slots[j].plen1)
            break;
        k = slot_hash(t->slots[j].key, t->slots[j].plen1) & m;
        if (((j - k) & m) >= ((j - i) & m)) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    memset(&t->slots[i], 0, sizeof(t->slots[i]));
    t->count--;
    if (--t->len_count[prefix] == 0)
        rebuild_lens(t);
    return 0;
}

int ff_table_finalize(struct ff_table *t)
{
    uint32_t pcap = cap_for(t->count), m = pcap - 1;
    struct ff_peer *peers = calloc(pcap, sizeof(*peers));

    if (!peers)
        return -ENOMEM;
    for (uint32_t i = 0; i < t->cap; i++) {
        uint32_t ip = t->slots[i].peer_ip, h;
        if (!t->slots[i].plen1 || ip == 0)
            continue;
        for (h = ff_fmix32(ip) & m; peers[h].ip && peers[h].ip != ip; h = (h + 1) & m)
            ;
        if (!peers[h].ip)
            peers[h] = (struct ff_peer){ip, t->slots[i].pidx};
    }
    free(t->peers);
    t->peers = peers;
    t->peer_cap = pcap;
    return 0;
}

int ff_table_build(const struct ff_route *routes, size_t n, struct ff_table **out)
{
    struct ff_table *t;
    int rc;

    if (n > (1u << 28))
        return -E2BIG;
    rc = ff_table_new(&t, (uint32_t)n);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if ((rc = ff_table_insert(t, &routes[i])) < 0) {
            ff_table_free(t);
            return rc;
        }
    }
    if ((rc = ff_table_finalize(t)) < 0) {
        ff_table_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

size_t ff_table_routes(const struct ff_table *t, struct ff_route *out, size_t cap)
{
    size_t n = 0;

    for (uint32_t i = 0; i < t->cap && n < cap; i++) {
        const struct ff_slot *s = &t->slots[i];
        if (!s->plen1)
            continue;
        out[n].net = s->key;
        out[n].prefix = (uint8_t)(s->plen1 - 1);
        out[n].peer_ip = s->peer_ip;
        out[n].peer_port = s->peer_port;
        n++;
    }
    return n;
}

const struct ff_slot *ff_table_lookup(const struct ff_table *t, uint32_t dst)
{
    uint32_t m = t->cap - 1;

    for (uint8_t li = 0; li < t->nlens; li++) {
        uint8_t plen1 = (uint8_t)(t->lens[li] + 1);
        uint32_t key = dst & ff_prefix_mask(t->lens[li]);
        uint32_t i = slot_hash(key, plen1) & m;
        for (;;) {
            const struct ff_slot *s = &t->slots[i];
            if (!s->plen1)
                break;
            if (s->key == key && s->plen1 == plen1)
                return s;
            i = (i + 1) & m;
        }
    }
    return NULL;
}

static const struct ff_peer *find_peer(const struct ff_table *t, uint32_t ip)
{
    uint32_t m, h;

    if (!t->peer_cap || ip == 0)
        return NULL;
    m = t->peer_cap - 1;
    for (h = ff_fmix32(ip) & m; t->peers[h].ip; h = (h + 1) & m)
        if (t->peers[h].ip == ip)
            return &t->peers[h];
    return NULL;
}

int ff_table_has_peer(const struct ff_table *t, uint32_t ip)
{
    return find_peer(t, ip) != NULL;
}

uint32_t ff_table_peer_index(const struct ff_table *t, uint32_t ip)
{
    const struct ff_peer *p = find_peer(t, ip);

    return p ? p->pidx : 0;
}

struct ff_slot *ff_table_get(const struct ff_table *t, uint32_t net, uint8_t prefix)
{
    int32_t i;

    if (prefix > 32)
        return NULL;
    i = find(t, net & ff_prefix_mask(prefix), (uint8_t)(prefix + 1));
    return i < 0 ? NULL : &t->slots[i];
}

uint32_t ff_table_max_probe(const struct ff_table *t)
{
    uint32_t m = t->cap - 1, worst = 0;

    for (uint32_t i = 0; i < t->cap; i++) {
        const struct ff_slot *s = &t->slots[i];
        uint32_t dist;
        if (!s->plen1)
            continue;
        dist = ((i - (slot_hash(s->key, s->plen1) & m)) & m) + 1;
        if (dist > worst)
            worst = dist;
    }
    return worst;
}

uint64_t ff_table_bench(const struct ff_table *t, const uint32_t *dsts, size_t ndst, uint64_t n)
{
    uint64_t hits = 0;
    size_t j = 0;

    if (!ndst)
        return 0;
    for (uint64_t i = 0; i < n; i++) {
        hits += ff_table_lookup(t, dsts[j]) != NULL;
        if (++j == ndst)
            j = 0;
    }
    return hits;
}
