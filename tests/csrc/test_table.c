/* Route table: operations, longest-prefix semantics, probe lengths, a naive-model comparison,
 * counter indices. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ff_check.h"
#include "ff_table.h"

static struct ff_route R(uint32_t net, uint8_t p, uint32_t peer, uint16_t port)
{
    struct ff_route r = {net, p, peer, port};
    return r;
}

#define IP(a, b, c, d) ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (d))

static void test_basic(void)
{
    struct ff_table *t;
    const struct ff_slot *s;
    struct ff_route r;

    CHECK_EQ(ff_table_new(&t, 0), 0);
    CHECK(ff_table_lookup(t, IP(10, 10, 16, 1)) == NULL);
    r = R(IP(10, 10, 16, 0), 20, IP(192, 0, 2, 11), 8285);
    CHECK_EQ(ff_table_insert(t, &r), 0);
    CHECK_EQ(ff_table_finalize(t), 0);
    s = ff_table_lookup(t, IP(10, 10, 31, 255));
    CHECK(s && s->peer_ip == IP(192, 0, 2, 11) && s->peer_port == 8285);
    CHECK(ff_table_lookup(t, IP(10, 10, 32, 0)) == NULL);
    CHECK(ff_table_has_peer(t, IP(192, 0, 2, 11)));
    CHECK(!ff_table_has_peer(t, IP(192, 0, 2, 12)));
    /* host bits are masked; re-insert updates in place */
    r = R(IP(10, 10, 17, 5), 20, IP(192, 0, 2, 12), 9000);
    CHECK_EQ(ff_table_insert(t, &r), 0);
    CHECK_EQ(t->count, 1);
    s = ff_table_lookup(t, IP(10, 10, 16, 1));
    CHECK(s && s->peer_ip == IP(192, 0, 2, 12) && s->peer_port == 9000);
    /* longer prefix wins; default route catches the rest */
    r = R(IP(10, 10, 16, 0), 24, IP(192, 0, 2, 13), 8285);
    CHECK_EQ(ff_table_insert(t, &r), 0);
    r = R(0, 0, IP(192, 0, 2, 14), 8285);
    CHECK_EQ(ff_table_insert(t, &r), 0);
    CHECK_EQ(t->nlens, 3);
    CHECK_EQ(t->lens[0], 24);
    CHECK_EQ(t->lens[2], 0);
    CHECK_EQ(ff_table_lookup(t, IP(10, 10, 16, 9))->peer_ip, IP(192, 0, 2, 13));
    CHECK_EQ(ff_table_lookup(t, IP(10, 10, 18, 9))->peer_ip, IP(192, 0, 2, 12));
    CHECK_EQ(ff_table_lookup(t, IP(8, 8, 8, 8))->peer_ip, IP(192, 0, 2, 14));
    CHECK_EQ(ff_table_remove(t, IP(10, 10, 16, 0), 24), 0);
    CHECK_EQ(ff_table_remove(t, IP(10, 10, 16, 0), 24), -ENOENT);
    CHECK_EQ(ff_table_remove(t, 0, 33), -EINVAL);
    r = R(0, 33, 1, 1);
    CHECK_EQ(ff_table_insert(t, &r), -EINVAL);
    CHECK_EQ(t->nlens, 2);
    CHECK_EQ(ff_table_lookup(t, IP(10, 10, 16, 9))->peer_ip, IP(192, 0, 2, 12));
    ff_table_free(t);
}

/* Naive model: a flat array, linear longest-prefix scan. */
struct model { struct ff_route r[4096]; int n; };

static int model_find(struct model *m, uint32_t net, uint8_t p)
{
    for (int i = 0; i < m->n; i++)
        if (m->r[i].net == net && m->r[i].prefix == p)
            return i;
    return -1;
}

static const struct ff_route *model_lookup(struct model *m, uint32_t dst)
{
    const struct ff_route *best = NULL;
    for (int i = 0; i < m->n; i++)
        if ((dst & ff_prefix_mask(m->r[i].prefix)) == m->r[i].net &&
            (!best || m->r[i].prefix > best->prefix))
            best = &m->r[i];
    return best;
}

static void test_random_vs_model(void)
{
    static struct model m;
    static const uint8_t lens[] = {8, 16, 20, 24, 32};
    struct ff_table *t;
    int mismatches = 0;

    CHECK_EQ(ff_table_new(&t, 4), 0);
    for (int op = 0; op < 200000; op++) {
        uint8_t p = lens[ff_rand() % 5];
        uint32_t net = (IP(10, 0, 0, 0) | (uint32_t)(ff_rand() & 0x00ff0fff)) & ff_prefix_mask(p);
        int k = (int)(ff_rand() % 3), i = model_find(&m, net, p);
        if (k == 0 && m.n < 4096) {
            struct ff_route r = R(net, p, (uint32_t)ff_rand() | 1, (uint16_t)ff_rand());
            CHECK_EQ(ff_table_insert(t, &r), 0);
            if (i < 0)
                i = m.n++;
            m.r[i] = r;
        } else if (k == 1) {
            int rc = ff_table_remove(t, net, p);
            mismatches += rc != (i < 0 ? -ENOENT : 0);
            if (i >= 0)
                m.r[i] = m.r[--m.n];
        } else {
            uint32_t dst = IP(10, 0, 0, 0) | (uint32_t)(ff_rand() & 0x00ffffff);
            const struct ff_slot *s = ff_table_lookup(t, dst);
            const struct ff_route *e = model_lookup(&m, dst);
            mismatches += !s != !e;
            if (s && e)
                mismatches += s->peer_ip != e->peer_ip || s->peer_port != e->peer_port;
        }
        mismatches += t->count != (uint32_t)m.n;
    }
    CHECK_EQ(mismatches, 0);
    ff_table_free(t);
}

static void test_probe_bound(void)
{
    /* 10k sequential /20 subnets (the flannel case): an identity hash would cluster badly */
    enum { N = 10000 };
    struct ff_route *rs = calloc(N, sizeof(*rs));
    struct ff_table *t;
    uint32_t *dsts = malloc(N * sizeof(*dsts));

    for (uint32_t i = 0; i < N; i++) {
        rs[i] = R(IP(10, 0, 0, 0) + (i << 12), 20, IP(192, 0, 2, 0) + i, 8285);
        dsts[i] = rs[i].net + 77;
    }
    CHECK_EQ(ff_table_build(rs, N, &t), 0);
    CHECK_EQ(t->count, N);
    CHECK(t->cap >= 2 * N);
    CHECK(ff_table_max_probe(t) <= 32);
    CHECK_EQ(ff_table_bench(t, dsts, N, 3 * N), 3 * N);
    for (uint32_t i = 0; i < N; i++)
        CHECK(ff_table_has_peer(t, IP(192, 0, 2, 0) + i));
    /* clone is independent */
    {
        struct ff_table *c;
        struct ff_route *out = calloc(N, sizeof(*out));
        CHECK_EQ(ff_table_clone(t, &c), 0);
        CHECK_EQ(ff_table_remove(c, rs[5].net, 20), 0);
        CHECK(ff_table_lookup(t, dsts[5]) != NULL);
        CHECK(ff_table_lookup(c, dsts[5]) == NULL);
        CHECK_EQ(ff_table_routes(c, out, N), N - 1);
        ff_table_free(c);
        free(out);
    }
    ff_table_free(t);
    free(rs);
    free(dsts);
}

/* Counter indices: stored per slot, kept by clone, found by address in the peer set (the first
 * route of an address in slot order), and exact lookups by net/prefix. */
static void test_counter_index(void)
{
    struct ff_table *t, *c;
    struct ff_route r1 = R(IP(10, 10, 16, 0), 20, IP(192, 0, 2, 11), 8285);
    struct ff_route r2 = R(IP(10, 10, 32, 0), 20, IP(192, 0, 2, 12), 8285);
    struct ff_route r3 = R(IP(10, 10, 48, 0), 20, IP(192, 0, 2, 12), 8285);
    struct ff_slot *s;
    uint32_t first = 0;

    CHECK_EQ(ff_table_new(&t, 0), 0);
    CHECK_EQ(ff_table_insert(t, &r1), 0);
    CHECK_EQ(ff_table_insert(t, &r2), 0);
    CHECK_EQ(ff_table_insert(t, &r3), 0);
    CHECK(ff_table_get(t, IP(10, 10, 16, 0), 24) == NULL);          /* exact, not longest */
    CHECK(ff_table_get(t, IP(10, 10, 17, 0), 20) != NULL);          /* host bits masked */
    CHECK(ff_table_get(t, 0, 33) == NULL);
    CHECK_EQ(ff_table_get(t, IP(10, 10, 16, 0), 20)->pidx, 0);      /* the writer assigns it */
    ff_table_get(t, IP(10, 10, 16, 0), 20)->pidx = 7;
    ff_table_get(t, IP(10, 10, 32, 0), 20)->pidx = 8;
    ff_table_get(t, IP(10, 10, 48, 0), 20)->pidx = 9;
    CHECK_EQ(ff_table_peer_index(t, IP(192, 0, 2, 11)), 0);         /* no peer set yet */
    CHECK_EQ(ff_table_finalize(t), 0);
    CHECK_EQ(ff_table_peer_index(t, IP(192, 0, 2, 11)), 7);
    CHECK_EQ(ff_table_peer_index(t, IP(192, 0, 2, 13)), 0);
    CHECK_EQ(ff_table_peer_index(t, 0), 0);
    for (uint32_t i = 0; i < t->cap && !first; i++)                 /* the first 192.0.2.12 slot */
        if (t->slots[i].plen1 && t->slots[i].peer_ip == IP(192, 0, 2, 12))
            first = t->slots[i].pidx;
    CHECK_EQ(ff_table_peer_index(t, IP(192, 0, 2, 12)), first);
    CHECK_EQ(ff_table_clone(t, &c), 0);
    CHECK_EQ(ff_table_get(c, IP(10, 10, 48, 0), 20)->pidx, 9);
    CHECK_EQ(ff_table_finalize(c), 0);
    CHECK_EQ(ff_table_peer_index(c, IP(192, 0, 2, 11)), 7);
    /* an update in place starts without an index: the writer decides whether it carries over */
    CHECK_EQ(ff_table_insert(c, &r1), 0);
    s = ff_table_get(c, IP(10, 10, 16, 0), 20);
    CHECK(s && s->pidx == 0);
    CHECK_EQ(ff_table_remove(c, IP(10, 10, 32, 0), 20), 0);
    CHECK_EQ(ff_table_get(c, IP(10, 10, 48, 0), 20)->pidx, 9);      /* a shifted slot keeps it */
    ff_table_free(c);
    ff_table_free(t);
}

int main(void)
{
    test_basic();
    test_random_vs_model();
    test_probe_bound();
    test_counter_index();
    CHECK_DONE();
}
