/* ff_gro against the defects of issue 8: what tcp_gro_receive / inet_gro_flush flush on
 * (window, IP ID) must keep segments apart (defect 8), and no input a sender chooses may make
 * a batch cost more than a small factor of a normal one (defect 9: fragments used to scan
 * every item, and 4-tuples sharing a slot of the fixed hash probed linearly).
 *
 * The cost check is a ratio measured in this run (median of interleaved repetitions), never an
 * absolute time: test_gro_defects [max_ratio] (default FF_GRO_MAX_RATIO). It prints the ratios.
 * Exit status is nonzero when any check fails. */
#include <time.h>

#include "offload_testlib.h"

#define FF_GRO_MAX_RATIO 4.0   /* worst-case batch / normal batch, both 4096 small packets */
#define BATCH 4096
#define REPS 11

/* ---- defect 8: the merge rules ------------------------------------------------------------- */
static int run(struct ff_gro *g, uint8_t **pk, const size_t *len, int n)
{
    ff_gro_reset(g);
    for (int i = 0; i < n; i++)
        CHECK(ff_gro_add(g, pk[i], len[i]) >= 0);
    return ff_gro_finish(g);
}

/* Recompute both checksums after an edit. */
static void resum(uint8_t *p, size_t len)
{
    ff_ip4_set_csum(p);
    ff_st16(p + 36, 0);
    uint32_t s = naive_sum(0, p + 12, 8) + 6 + (uint32_t)(len - 20);
    ff_st16(p + 36, (uint16_t)~naive_fold(naive_sum(s, p + 20, len - 20)));
}

/* n adjacent 1000-byte ACK segments of one flow, IP IDs ids[i], DF as df, windows win[i]. */
static void segs(uint8_t b[][1200], uint8_t **pk, size_t *pl, int n, const uint16_t *ids,
                 int df, const uint16_t *win, size_t optlen)
{
    static uint8_t pay[8000];
    for (int i = 0; i < n; i++) {
        pl[i] = mk_tcp(b[i], pay + i * 1000, 1000, 7000u + 1000u * (uint32_t)i, TCP_ACK, optlen, ids[i]);
        if (!df)
            ff_st16(b[i] + 6, 0);
        ff_st16(b[i] + 34, win[i]);
        resum(b[i], pl[i]);
        pk[i] = b[i];
    }
}

static void test_window_and_id(void)
{
    static uint8_t b[4][1200];
    uint8_t *pk[4];
    size_t pl[4];
    struct ff_gro *g = ff_gro_new(16, 0);
    const uint16_t w501[] = { 501, 501, 501 }, wupd[] = { 501, 9999, 9999 };
    const uint16_t inc[] = { 7, 8, 9 }, fixed[] = { 7, 7, 7 }, jump[] = { 7, 12, 13 };
    const uint16_t fixthen[] = { 7, 7, 8 }, wrap[] = { 0xffff, 0, 1 };

    segs(b, pk, pl, 3, inc, 1, w501, 0);
    CHECK_EQ(run(g, pk, pl, 3), 1);                  /* baseline: one item */
    /* A window update inside the batch: the second segment must leave with its window. */
    segs(b, pk, pl, 3, inc, 1, wupd, 0);
    CHECK_EQ(run(g, pk, pl, 3), 2);
    CHECK_EQ(ff_gro_item_segs(g, 0), 1);
    int n = ff_gro_item_copy(g, 1, g_item, sizeof g_item);
    CHECK(n > 0);
    CHECK_EQ(ff_ld16(g_item + FF_VNET_HDR_LEN + 34), 9999);
    /* IP IDs: incrementing merges (across the 16-bit wrap too), a jump does not; a fixed ID
     * merges only with DF (RFC 6864 atomic datagrams), and a fixed flow stays fixed. */
    segs(b, pk, pl, 3, wrap, 1, w501, 0);
    CHECK_EQ(run(g, pk, pl, 3), 1);
    segs(b, pk, pl, 3, jump, 1, w501, 0);
    CHECK_EQ(run(g, pk, pl, 3), 2);
    CHECK_EQ(ff_gro_item_segs(g, 1), 2);             /* 12, 13 follow each other */
    segs(b, pk, pl, 3, fixed, 1, w501, 0);
    CHECK_EQ(run(g, pk, pl, 3), 1);
    segs(b, pk, pl, 3, fixed, 0, w501, 0);
    CHECK_EQ(run(g, pk, pl, 3), 3);
    segs(b, pk, pl, 3, fixthen, 1, w501, 0);
    CHECK_EQ(run(g, pk, pl, 3), 2);
    segs(b, pk, pl, 3, inc, 0, w501, 0);             /* no DF, incrementing: merges */
    CHECK_EQ(run(g, pk, pl, 3), 1);
    /* Timestamps (option bytes) must match exactly: a new TSval starts a new item. */
    segs(b, pk, pl, 3, inc, 1, w501, 12);
    CHECK_EQ(run(g, pk, pl, 3), 1);
    b[1][40 + 5] ^= 1;
    resum(b[1], pl[1]);
    CHECK_EQ(run(g, pk, pl, 3), 3);
    ff_gro_free(g);
}

/* ---- defect 9: the cost of hostile batches ---------------------------------------------------- */
static uint8_t g_pkts[BATCH][128];
static uint8_t *g_pk[BATCH];
static size_t g_pl[BATCH];

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Small TCP segment i: flow = (src, sport), seq and ID as a sender would number them. */
static void tcp_pkt(int i, uint32_t src, uint32_t ports, uint32_t seq, uint16_t id)
{
    static const uint8_t pay[64];
    g_pl[i] = mk_tcp(g_pkts[i], pay, sizeof pay, seq, TCP_ACK, 0, id);
    ff_st32(g_pkts[i] + 12, src);
    ff_st32(g_pkts[i] + 20, ports);
    resum(g_pkts[i], g_pl[i]);
    g_pk[i] = g_pkts[i];
}

/* A normal batch: 64 flows of 64 segments each, interleaved (what a few busy peers send). */
static void batch_normal(void)
{
    for (int i = 0; i < BATCH; i++) {
        int f = i % 64, k = i / 64;
        tcp_pkt(i, 0x0a010000u + (uint32_t)f, 40000u << 16 | 5201, 64u * (uint32_t)k, (uint16_t)k);
    }
}

/* Fragments (a first fragment, MF set) of distinct host pairs interleaved with TCP segments:
 * each fragment used to scan every item. */
static void batch_fragments(void)
{
    for (int i = 0; i < BATCH; i++) {
        int k = i / 2;
        tcp_pkt(i, 0x0a020000u + (uint32_t)k, 40000u << 16 | 5201, 0, 0);
        if (i & 1) {
            ff_st16(g_pkts[i] + 6, 0x2000);     /* MF: a first fragment */
            ff_ip4_set_csum(g_pkts[i]);
        }
    }
}

/* The hash main had (fixed, unkeyed): the slot of a flow in the table of a 4096-packet batch. */
static uint32_t old_slot(uint32_t src, uint32_t dst, uint32_t ports, uint8_t proto)
{
    uint32_t h = src * 0x9e3779b1u ^ dst * 0x85ebca77u ^ ports * 0xc2b2ae3du ^ proto;
    h ^= h >> 15;
    h *= 0x2c1b3c6du;
    h ^= h >> 13;
    return h & 8191u;
}

/* Distinct 4-tuples (port pairs) that all hash to one slot: with `g` under its key, or (g NULL)
 * under the old fixed hash. */
static void batch_colliding(const struct ff_gro *g)
{
    uint32_t src = 0x0a030001u, dst = 0x0a020304u, want = 0, ports = 0;
    (void)g;
    for (int i = 0; i < BATCH; ports++) {
        uint32_t s = old_slot(src, dst, ports, 6);
#ifdef FF_GRO_KEYED
        if (g)
            s = ff_gro_flow_slot(g, src, dst, ports, 6);
#endif
        if (i == 0)
            want = s;
        if (s == want)
            tcp_pkt(i++, src, ports, 0, 0);
    }
}

static double median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[n / 2];
}

/* Median time of one batch of the packets now in g_pk, and of a normal batch, interleaved. */
static double cost_ratio(struct ff_gro *g, const char *what, double max_ratio)
{
    static uint8_t saved[BATCH][128];
    static size_t saved_len[BATCH];
    double tw[REPS], tn[REPS];
    memcpy(saved, g_pkts, sizeof saved);
    memcpy(saved_len, g_pl, sizeof saved_len);
    for (int r = 0; r < REPS; r++) {
        double t0 = now_ns();
        CHECK(run(g, g_pk, g_pl, BATCH) > 0);
        tw[r] = now_ns() - t0;
        memcpy(g_pkts, saved, sizeof saved);    /* ff_gro rewrote merged heads */
        batch_normal();
        t0 = now_ns();
        CHECK(run(g, g_pk, g_pl, BATCH) > 0);
        tn[r] = now_ns() - t0;
        memcpy(g_pkts, saved, sizeof saved);
        memcpy(g_pl, saved_len, sizeof saved_len);
        for (int i = 0; i < BATCH; i++)
            g_pk[i] = g_pkts[i];
    }
    double w = median(tw, REPS), n = median(tn, REPS), ratio = w / n;
    printf("GRO cost, %-40s %9.0f ns per batch, normal %9.0f ns: %.2fx\n", what, w, n, ratio);
    CHECK(ratio <= max_ratio);
    return ratio;
}

static void test_cost(double max_ratio)
{
    struct ff_gro *g = ff_gro_new(BATCH, 0);
    CHECK(g != NULL);
    batch_fragments();
    cost_ratio(g, "fragments among flows:", max_ratio);
    batch_colliding(NULL);
    cost_ratio(g, "4-tuples sharing a slot (old hash):", max_ratio);
#ifdef FF_GRO_KEYED
    /* Even a sender that knew the key: probes are bounded, the batch stays linear. */
    static const uint64_t key[4] = { 0x243f6a8885a308d3ull, 0x13198a2e03707344ull,
                                     0xa4093822299f31d0ull, 0x082efa98ec4e6c89ull };
    ff_gro_set_key(g, key);
    batch_colliding(g);
    cost_ratio(g, "4-tuples sharing a slot (known key):", max_ratio);
    /* ... and ordering is kept: every colliding flow is its own item, in order. */
    CHECK_EQ(run(g, g_pk, g_pl, BATCH), BATCH);
#endif
    ff_gro_free(g);
}

int main(int argc, char **argv)
{
    double max_ratio = argc > 1 ? atof(argv[1]) : FF_GRO_MAX_RATIO;
    test_window_and_id();
    test_cost(max_ratio);
    printf("test_gro_defects: %d checks, %d failed\n", g_checks, g_fail);
    return g_fail != 0;
}
