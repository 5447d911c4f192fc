/* Offload building blocks, part 2: userspace GRO (ff_gro_*). Split-then-GRO round trips, the
 * merge rules one by one, UDP passing unmerged, and a lossless/order property test over random
 * batches.
 * Exit status is nonzero when any check fails. */
#include "offload_testlib.h"

/* Copy the packets into exact-size heap buffers, feed them, finish; returns item count. */
static int gro_run(struct ff_gro *g, uint8_t **pk, const size_t *len, int n, int *rcs)
{
    ff_gro_reset(g);
    for (int i = 0; i < n; i++) {
        int rc = ff_gro_add(g, pk[i], len[i]);
        if (rcs) rcs[i] = rc;
    }
    return ff_gro_finish(g);
}

static void check_merged_item(struct ff_gro *g, int i, const uint8_t *pay, size_t paylen,
                              size_t optlen, int nsegs, uint16_t gso)
{
    int n = ff_gro_item_copy(g, i, g_item, sizeof g_item);
    size_t hdrl = 40 + optlen;
    CHECK_EQ(n, FF_VNET_HDR_LEN + hdrl + paylen);
    CHECK_EQ(ff_gro_item_segs(g, i), nsegs);
    struct virtio_net_hdr vh;
    memcpy(&vh, g_item, sizeof vh);
    const uint8_t *p = g_item + FF_VNET_HDR_LEN;
    size_t len = hdrl + paylen;
    CHECK_EQ(vh.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
    CHECK_EQ(vh.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    CHECK_EQ(vh.gso_size, gso);
    CHECK_EQ(vh.hdr_len, hdrl);
    CHECK_EQ(vh.csum_start, 20);
    CHECK_EQ(vh.csum_offset, 16);
    CHECK_EQ(ff_ld16(p + 2), len);
    CHECK_EQ(naive_ck(p, 20), 0);
    CHECK_EQ(ff_ld16(p + 36), naive_pseudo(p, len));
    CHECK(memcmp(p + hdrl, pay, paylen) == 0);
}

static void test_gro_roundtrip(void)
{
    static uint8_t pay[65536];
    rnd_fill(pay, sizeof pay);
    init_outs();
    struct ff_gro *g = ff_gro_new(MAXSEG, 0);
    CHECK(g != NULL);
    const size_t sizes[] = { 2 * 1448, 10000, 62000, 65535 - 40 - 12 };
    for (size_t a = 0; a < 4; a++)
        for (size_t opt = 0; opt <= 12; opt += 12) {
            size_t paylen = sizes[a] - (a == 3 ? 12 - opt : 0);
            struct virtio_net_hdr h;
            size_t len;
            uint8_t *sf = mk_tso(&h, pay, paylen, 1448, TCP_ACK | TCP_PSH, opt, &len);
            int n = ff_gso_split(&h, sf, len, g_outs, SEGCAP, g_lens, MAXSEG);
            CHECK(n > 1);
            uint8_t *pk[MAXSEG];
            size_t pl[MAXSEG];
            for (int i = 0; i < n; i++) {
                pk[i] = dup_exact(g_outs[i], g_lens[i]);
                pl[i] = g_lens[i];
            }
            int rcs[MAXSEG];
            int items = gro_run(g, pk, pl, n, rcs);
            int want_items = (int)((n + FF_GRO_MAX_IOV - 3) / (FF_GRO_MAX_IOV - 2));
            CHECK_EQ(items, want_items);
            CHECK_EQ(rcs[0], FF_GRO_NEW_ITEM);
            if (items == 1) {
                CHECK_EQ(rcs[n - 1], FF_GRO_MERGED);
                check_merged_item(g, 0, pay, paylen, opt, n, 1448);
                /* iovecs: hdr, head, tails */
                struct iovec iov[FF_GRO_MAX_IOV];
                CHECK_EQ(ff_gro_item_iov(g, 0, iov, FF_GRO_MAX_IOV), n + 1);
                CHECK_EQ(iov[0].iov_len, FF_VNET_HDR_LEN);
                CHECK_EQ(ff_gro_item_iov(g, 0, iov, n), -ENOSPC);
                /* Split the merged item again: same segments as the first split (PSH last). */
                struct virtio_net_hdr vh;
                int m = ff_gro_item_copy(g, 0, g_item, sizeof g_item);
                memcpy(&vh, g_item, sizeof vh);
                uint8_t *again = dup_exact(g_item + FF_VNET_HDR_LEN, (size_t)m - FF_VNET_HDR_LEN);
                static uint8_t seg2[MAXSEG][SEGCAP];
                uint8_t *o2[MAXSEG];
                uint16_t l2[MAXSEG];
                for (int i = 0; i < MAXSEG; i++) o2[i] = seg2[i];
                CHECK_EQ(ff_gso_split(&vh, again, (size_t)m - FF_VNET_HDR_LEN, o2, SEGCAP, l2, MAXSEG), n);
                for (int i = 0; i < n; i++) {
                    CHECK_EQ(l2[i], pl[i]);
                    CHECK(memcmp(o2[i], g_outs[i], pl[i]) == 0);
                }
                free(again);
            } else {
                /* More segments than one item may hold: split at the iovec limit, in order. */
                size_t off = 0;
                for (int it = 0; it < items; it++) {
                    int segs = ff_gro_item_segs(g, it);
                    size_t bytes = segs == FF_GRO_MAX_IOV - 1 ? (size_t)segs * 1448 : paylen - off;
                    if (segs > 1)
                        check_merged_item(g, it, pay + off, bytes, opt, segs, 1448);
                    off += bytes;
                }
                CHECK_EQ(off, paylen);
            }
            for (int i = 0; i < n; i++)
                free(pk[i]);
            free(sf);
        }
    ff_gro_free(g);
}

/* One candidate flow of 3 segments; mutate the middle one and expect it not to merge. */
static void test_gro_rules(void)
{
    static uint8_t pay[8000];
    rnd_fill(pay, sizeof pay);
    struct ff_gro *g = ff_gro_new(16, 0);
    uint8_t *pk[8];
    size_t pl[8];
    int rcs[8];
    static uint8_t b[8][2000];
#define BUILD3(opt) do { for (int i = 0; i < 3; i++) { \
        pl[i] = mk_tcp(b[i], pay + i * 1000, 1000, 5000u + 1000u * (uint32_t)i, TCP_ACK, opt, (uint16_t)i); \
        pk[i] = b[i]; } } while (0)
#define RECSUM(p) do { ff_ip4_set_csum(p); ff_st16((p) + 36, 0); \
        uint32_t s_ = naive_sum(0, (p) + 12, 8) + 6 + (uint32_t)(ff_ld16((p) + 2) - 20); \
        ff_st16((p) + 36, (uint16_t)~naive_fold(naive_sum(s_, (p) + 20, ff_ld16((p) + 2) - 20u))); } while (0)

    /* Baseline: all three merge into one item. */
    BUILD3(0);
    CHECK_EQ(gro_run(g, pk, pl, 3, rcs), 1);
    CHECK_EQ(ff_gro_item_segs(g, 0), 3);
    check_merged_item(g, 0, pay, 3000, 0, 3, 1000);

    struct { const char *name; int items; } cases[] = {
        { "seq gap", 3 }, { "other port", 3 }, { "other ack", 3 }, { "bad tcp csum", 3 },
        { "bad ip csum", 3 }, { "SYN", 3 }, { "FIN", 3 }, { "URG", 3 }, { "RST", 3 }, { "no ACK", 3 },
        { "options differ", 3 }, { "TOS differs", 3 }, { "TTL differs", 3 }, { "DF differs", 3 },
        { "IP options", 3 }, { "fragment (MF on all)", 3 }, { "len != totlen", 3 }, { "larger segment", 2 },
        { "PSH middle", 2 }, { "short middle", 2 }, { "no payload", 3 }, { "CWR", 3 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        BUILD3(c == 10 ? 4 : 0);
        uint8_t *m = b[1];
        switch (c) {
        case 0: ff_st32(m + 24, ff_ld32(m + 24) + 1); RECSUM(m); break;
        case 1: ff_st16(m + 20, 40001); RECSUM(m); break;
        case 2: ff_st32(m + 28, 7); RECSUM(m); break;
        case 3: m[36] ^= 0x55; break;
        case 4: m[10] ^= 0x55; break;
        case 5: m[33] |= TCP_SYN; RECSUM(m); break;
        case 6: m[33] |= TCP_FIN; RECSUM(m); break;
        case 7: m[33] |= TCP_URG; RECSUM(m); break;
        case 8: m[33] |= TCP_RST; RECSUM(m); break;
        case 9: m[33] = TCP_PSH; RECSUM(m); break;
        case 10: m[42] ^= 1; RECSUM(m); break;
        case 11: m[1] = 0x10; RECSUM(m); break;
        case 12: m[8] = 63; RECSUM(m); break;
        case 13: m[6] = 0; RECSUM(m); break;
        case 14: pl[1] = mk_tcp(m + 4, pay + 1000, 1000, 6000, TCP_ACK, 0, 1) + 4;
            memmove(m, m + 4, 20); m[0] = 0x46; memset(m + 20, 1, 4);
            ff_st16(m + 2, (uint16_t)pl[1]); ff_ip4_set_csum(m);
            break;   /* TCP csum unchanged: pseudo-header does not cover IP options */
        case 15: for (int i = 0; i < 3; i++) { b[i][6] |= 0x20; RECSUM(b[i]); } break;   /* MF */
        case 16: pl[1] += 1; break;
        case 17: /* 1001-byte middle segment */
            pl[1] = mk_tcp(m, pay + 1000, 1001, 6000, TCP_ACK, 0, 1);
            pl[2] = mk_tcp(b[2], pay + 2001, 999, 7001, TCP_ACK, 0, 2);
            break;
        case 18: m[33] |= TCP_PSH; RECSUM(m); break;
        case 19: /* 999-byte middle: closes the item; third starts a new one */
            pl[1] = mk_tcp(m, pay + 1000, 999, 6000, TCP_ACK, 0, 1);
            pl[2] = mk_tcp(b[2], pay + 1999, 1000, 6999, TCP_ACK, 0, 2);
            break;
        case 20: pl[1] = mk_tcp(m, pay, 0, 6000, TCP_ACK, 0, 1); break;
        case 21: m[33] |= TCP_CWR; RECSUM(m); break;
        }
        static uint8_t orig[3][2000];
        for (int i = 0; i < 3; i++) memcpy(orig[i], pk[i], pl[i]);
        int items = gro_run(g, pk, pl, 3, NULL);
        if (items != cases[c].items)
            fprintf(stderr, "gro case '%s': %d items, want %d\n", cases[c].name, items, cases[c].items);
        CHECK_EQ(items, cases[c].items);
        /* Pass-through items carry a zero vnet hdr and the packet unchanged, in order. */
        int k = 0;
        for (int it = 0; it < items; it++) {
            int segs = ff_gro_item_segs(g, it);
            int n = ff_gro_item_copy(g, it, g_item, sizeof g_item);
            if (segs == 1) {
                static const uint8_t zero[FF_VNET_HDR_LEN];
                CHECK(memcmp(g_item, zero, FF_VNET_HDR_LEN) == 0);
                CHECK_EQ(n, FF_VNET_HDR_LEN + pl[k]);
                CHECK(memcmp(g_item + FF_VNET_HDR_LEN, orig[k], pl[k]) == 0);
            }
            k += segs;
        }
        CHECK_EQ(k, 3);
    }

    /* PSH on the last segment merges and is kept on the head; on the first it closes. */
    BUILD3(0);
    b[2][33] |= TCP_PSH; RECSUM(b[2]);
    CHECK_EQ(gro_run(g, pk, pl, 3, NULL), 1);
    ff_gro_item_copy(g, 0, g_item, sizeof g_item);
    CHECK_EQ(g_item[FF_VNET_HDR_LEN + 33], TCP_ACK | TCP_PSH);
    BUILD3(0);
    b[0][33] |= TCP_PSH; RECSUM(b[0]);
    CHECK_EQ(gro_run(g, pk, pl, 3, NULL), 2);

    /* Interleaved flows keep per-flow order and item order follows first arrival. */
    for (int i = 0; i < 6; i++) {
        int f = i & 1, s = i >> 1;
        pl[i] = mk_tcp(b[i], pay + s * 1000, 1000, 1000u * (uint32_t)s, TCP_ACK, 0, (uint16_t)s);
        if (f) { ff_st16(b[i] + 22, 5202); RECSUM(b[i]); }
        pk[i] = b[i];
    }
    CHECK_EQ(gro_run(g, pk, pl, 6, NULL), 2);
    CHECK_EQ(ff_gro_item_segs(g, 0), 3);
    CHECK_EQ(ff_gro_item_segs(g, 1), 3);
    ff_gro_item_copy(g, 1, g_item, sizeof g_item);
    CHECK_EQ(ff_ld16(g_item + FF_VNET_HDR_LEN + 22), 5202);

    /* A non-candidate of the flow in between is a barrier: A1, A-FIN(no data), A2 -> 3 items. */
    pl[0] = mk_tcp(b[0], pay, 1000, 0, TCP_ACK, 0, 0);
    pl[1] = mk_tcp(b[1], pay, 0, 1000, TCP_ACK | TCP_FIN, 0, 1);
    pl[2] = mk_tcp(b[2], pay + 1000, 1000, 1000, TCP_ACK, 0, 2);
    for (int i = 0; i < 3; i++) pk[i] = b[i];
    CHECK_EQ(gro_run(g, pk, pl, 3, NULL), 3);
    /* ... and so is a fragment between the same hosts. */
    BUILD3(0);
    pl[1] = mk_udp(b[1], pay, 100, 9, 0);
    b[1][6] = 0x20; ff_ip4_set_csum(b[1]);
    b[1][9] = 6; ff_ip4_set_csum(b[1]);
    pl[2] = mk_tcp(b[2], pay + 1000, 1000, 6000, TCP_ACK, 0, 1);   /* adjacent to the first */
    CHECK_EQ(gro_run(g, pk, pl, 3, NULL), 3);
    pl[1] = mk_udp(b[1], pay, 100, 9, 0);   /* an unrelated packet in between does not split */
    pl[0] = mk_tcp(b[0], pay, 1000, 5000, TCP_ACK, 0, 0);
    CHECK_EQ(gro_run(g, pk, pl, 3, NULL), 2);
    /* Total length limit: 60 segments of 1100 B fit the iovecs but exceed 65535. */
    {
        struct ff_gro *g2 = ff_gro_new(64, 0);
        static uint8_t big[64][1200];
        uint8_t *bp[64];
        size_t bl[64];
        static uint8_t pay2[70000];
        for (int i = 0; i < 60; i++) {
            bl[i] = mk_tcp(big[i], pay2 + i * 1100, 1100, 1100u * (uint32_t)i, TCP_ACK, 0, 0);
            bp[i] = big[i];
        }
        CHECK_EQ(gro_run(g2, bp, bl, 60, NULL), 2);
        CHECK_EQ(ff_gro_item_segs(g2, 0), (65535 - 40) / 1100);
        /* Capacity: the 65th packet is refused. */
        ff_gro_reset(g2);
        for (int i = 0; i < 64; i++)
            CHECK(ff_gro_add(g2, bp[i % 60], bl[i % 60]) >= 0);
        CHECK_EQ(ff_gro_add(g2, bp[0], bl[0]), -ENOSPC);
        CHECK_EQ(ff_gro_add(g2, bp[0], 70000), -EINVAL);
        ff_gro_free(g2);
    }
    /* Kill switch, at creation and at run time. */
    {
        struct ff_gro *g2 = ff_gro_new(8, FF_GRO_NO_TCP);
        BUILD3(0);
        CHECK_EQ(gro_run(g2, pk, pl, 3, NULL), 3);
        ff_gro_set_flags(g2, 0);
        BUILD3(0);
        CHECK_EQ(gro_run(g2, pk, pl, 3, NULL), 1);
        ff_gro_set_flags(g2, FF_GRO_NO_TCP);
        BUILD3(0);
        CHECK_EQ(gro_run(g2, pk, pl, 3, NULL), 3);
        ff_gro_free(g2);
    }
    CHECK_EQ(ff_gro_item_segs(g, 99), -ERANGE);
    CHECK_EQ(ff_gro_item_copy(g, -1, g_item, sizeof g_item), -ERANGE);
    CHECK(ff_gro_new(0, 0) == NULL);
    ff_gro_free(g);
#undef BUILD3
#undef RECSUM
}

/* UDP is never merged (the TUN is not offered USO): each datagram of a flow is its own item,
 * unchanged and in order, whatever its checksum (0 included). */
static void test_gro_udp(void)
{
    static uint8_t pay[8000];
    rnd_fill(pay, sizeof pay);
    static uint8_t b[4][2000], orig[4][2000];
    uint8_t *pk[4];
    size_t pl[4];
    for (int i = 0; i < 4; i++) {
        pl[i] = mk_udp(b[i], pay + i * 1200, i == 3 ? 700 : 1200, (uint16_t)i, i == 1);
        pk[i] = b[i];
        memcpy(orig[i], b[i], pl[i]);
    }
    struct ff_gro *g = ff_gro_new(8, 0);
    CHECK_EQ(gro_run(g, pk, pl, 4, NULL), 4);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(ff_gro_item_segs(g, i), 1);
        CHECK_EQ(ff_gro_item_copy(g, i, g_item, sizeof g_item), (int)(FF_VNET_HDR_LEN + pl[i]));
        CHECK(memcmp(g_item + FF_VNET_HDR_LEN, orig[i], pl[i]) == 0);
    }
    ff_gro_free(g);
}

/* ======================================================= GRO property (lossless) === */
/* Random batches of interleaved TCP and UDP flows with random sizes, flags, gaps, bad
 * checksums, TTL/TOS/option changes, IP options, fragments and trailing bytes. Whatever GRO
 * decides, re-splitting every merged item (ff_gso_split on its vnet hdr) and taking the
 * pass-through items as they are must give back exactly the input packets, in input order
 * per flow (IP ID and IP checksum aside: a superframe's segments get ID head+i). UDP flows
 * only pass through, and must keep their place too. A wrong merge breaks this: a gap, a FIN or PSH in the
 * middle, a bad checksum, a different TTL or option, a larger segment after a smaller one. */
#define PB_MAX 64
struct pflow { int udp; uint16_t sport, mss, id, win; uint32_t seq, ack; uint8_t ttl, tos, opt, fixed_id; };

static size_t gen_pkt(uint8_t *p, struct pflow *f, const uint8_t *pay)
{
    size_t n = rnd() % 5 ? f->mss : rnd() % (f->mss + 40u);
    size_t len;
    uint32_t r = rnd() % 100;
    if (r < 3) f->ttl--;
    else if (r < 5) f->tos ^= 4;
    else if (r < 8) f->opt ^= 1;
    else if (r < 11) f->seq += 1 + rnd() % 3;   /* gap */
    else if (r < 13) f->ack += 1000;
    else if (r < 15) f->id += (uint16_t)(2 + rnd() % 100);   /* IP ID jump */
    else if (r < 16) f->fixed_id ^= 1;                    /* DF flow with a fixed ID */
    else if (r < 18) f->win += 1000;                      /* window update */
    if (f->udp) {
        len = mk_udp(p, pay, n, (uint16_t)rnd(), rnd() % 3 == 0);
        ff_st16(p + 20, f->sport);
    } else {
        uint8_t fl = TCP_ACK;
        uint32_t q = rnd() % 100;
        if (q < 6) fl |= TCP_PSH;
        else if (q < 8) fl |= TCP_FIN;
        else if (q < 9) fl = TCP_SYN | TCP_ACK;
        else if (q < 10) fl = TCP_PSH;
        else if (q < 11) fl |= TCP_CWR;
        len = mk_tcp(p, pay, n, f->seq, fl, 8, f->fixed_id ? f->id : f->id++);
        ff_st16(p + 20, f->sport);
        ff_st32(p + 28, f->ack);
        ff_st16(p + 34, f->win);
        p[41] = f->opt;
        f->seq += (uint32_t)n;
    }
    p[1] = f->tos;
    p[8] = f->ttl;
    uint32_t m = rnd() % 100;
    if (m < 2 && len + 4 <= 2000) {             /* IP options: header 24 bytes */
        memmove(p + 24, p + 20, len - 20);
        memset(p + 20, 1, 4);
        p[0] = 0x46;
        len += 4;
        ff_st16(p + 2, (uint16_t)len);
    } else if (m < 3) {
        p[6] |= 0x20;                           /* MF */
    }
    /* Recompute checksums for the final header (the pseudo-header ignores IP options). */
    size_t ihl = (size_t)(p[0] & 15) * 4, at = f->udp ? 6 : 16;
    ff_ip4_set_csum(p);
    if (!(f->udp && ff_ld16(p + ihl + 6) == 0)) {
        ff_st16(p + ihl + at, 0);
        uint32_t s = naive_sum(0, p + 12, 8) + p[9] + (uint32_t)(len - ihl);
        uint16_t c = (uint16_t)~naive_fold(naive_sum(s, p + ihl, len - ihl));
        ff_st16(p + ihl + at, f->udp && c == 0 ? 0xffff : c);
    }
    if (m >= 3 && m < 6)
        p[ihl + 8 + rnd() % 8] ^= 0x40;         /* bad L4 checksum */
    else if (m == 6)
        len++;                                  /* trailing byte: len != total length */
    return len;
}

/* Does out (a re-split or pass-through packet) equal the expected input? */
static int same_pkt(const uint8_t *out, size_t ol, const uint8_t *in, size_t il, int resplit)
{
    if (ol != il)
        return 0;
    for (size_t i = 0; i < il; i++) {
        if (resplit && (i == FF_IP4_ID || i == FF_IP4_ID + 1 || i == FF_IP4_CSUM ||
                        i == FF_IP4_CSUM + 1))
            continue;
        if (out[i] != in[i])
            return 0;
    }
    return 1;
}

static void test_gro_property(int rounds)
{
    static uint8_t pay[2000], orig[PB_MAX][2000], seg[PB_MAX][2048];
    rnd_fill(pay, sizeof pay);
    struct ff_gro *g = ff_gro_new(PB_MAX, 0);
    long merged = 0, total = 0, items_total = 0;
    for (int r = 0; r < rounds; r++) {
        struct pflow fl[4];
        int nf = 1 + (int)(rnd() % 4), n = 1 + (int)(rnd() % PB_MAX);
        for (int f = 0; f < nf; f++)
            fl[f] = (struct pflow){ rnd() % 4 == 0, (uint16_t)(1000 + f), (uint16_t)(1 + rnd() % 300),
                                    (uint16_t)rnd(), 501, rnd(), rnd(), 64, 0, 0, rnd() % 8 == 0 };
        uint8_t *pk[PB_MAX];
        size_t pl[PB_MAX];
        int flow_of[PB_MAX], q[4][PB_MAX], qn[4] = { 0 }, qh[4] = { 0 };
        ff_gro_reset(g);
        for (int i = 0; i < n; i++) {
            int f = (int)(rnd() % (unsigned)nf);
            pl[i] = gen_pkt(orig[i], &fl[f], pay);
            pk[i] = dup_exact(orig[i], pl[i]);
            flow_of[i] = f;
            q[f][qn[f]++] = i;
            CHECK(ff_gro_add(g, pk[i], pl[i]) >= 0);
        }
        int items = ff_gro_finish(g);
        items_total += items;
        int seen = 0;
        for (int it = 0; it < items; it++) {
            int segs = ff_gro_item_segs(g, it);
            int m = ff_gro_item_copy(g, it, g_item, sizeof g_item);
            struct virtio_net_hdr vh;
            memcpy(&vh, g_item, sizeof vh);
            const uint8_t *p = g_item + FF_VNET_HDR_LEN;
            size_t len = (size_t)m - FF_VNET_HDR_LEN;
            uint8_t *outs[PB_MAX];
            uint16_t ol[PB_MAX];
            int k = 1;
            if (segs > 1) {
                for (int i = 0; i < PB_MAX; i++) outs[i] = seg[i];
                k = ff_gso_split(&vh, p, len, outs, sizeof seg[0], ol, PB_MAX);
                CHECK_EQ(k, segs);
                merged += segs;
            } else {
                static const uint8_t zero[FF_VNET_HDR_LEN];
                CHECK(memcmp(g_item, zero, FF_VNET_HDR_LEN) == 0);
                outs[0] = (uint8_t *)p;
                ol[0] = (uint16_t)len;
            }
            for (int s = 0; s < k; s++) {
                const uint8_t *o = outs[s];
                size_t ihl = (size_t)(o[0] & 15) * 4;
                int f = ol[s] >= ihl + 2 ? ff_ld16(o + ihl) - 1000 : -1;
                CHECK(f >= 0 && f < nf && qh[f] < qn[f]);
                if (!(f >= 0 && f < nf && qh[f] < qn[f]))
                    continue;
                int want = q[f][qh[f]++];
                CHECK_EQ(flow_of[want], f);
                CHECK(same_pkt(o, ol[s], orig[want], pl[want], segs > 1));
                seen++;
            }
        }
        CHECK_EQ(seen, n);
        total += n;
        for (int i = 0; i < n; i++)
            free(pk[i]);
    }
    ff_gro_free(g);
    printf("GRO property: %d batches, %ld packets, %ld items, %ld packets merged\n", rounds, total,
           items_total, merged);
    CHECK(merged > total / 4);   /* the generator must exercise merging, not only pass-through */
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 5000;
    test_gro_roundtrip();
    test_gro_rules();
    test_gro_udp();
    test_gro_property(rounds);
    printf("test_offload_gro: %d checks, %d failed (property batches %d)\n", g_checks, g_fail, rounds);
    return g_fail != 0;
}
