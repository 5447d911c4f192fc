/* Offload building blocks, part 1: checksums, partial-checksum finish, TSO split and its
 * rejections (USO among them), UDP GSO planning, UDP_GRO splitting and cmsgs, and 100k hostile
 * inputs through every entry point (GRO included). Part 2 (GRO) is test_offload_gro.c; the real-kernel test is
 * test_offload_tun.c. Run under ASan+UBSan by ctest (scripts/test.sh).
 * Exit status is nonzero when any check fails. */
#include "offload_testlib.h"

/* ====================================================================== checksums === */
static void test_csum(void)
{
    static uint8_t buf[2100];
    for (size_t len = 0; len <= 2000; len++) {
        for (size_t al = 0; al < 8; al++) {
            if (al && len % 7 != 0 && len > 200)
                continue;   /* every length at alignment 0; a sample at odd alignments */
            rnd_fill(buf + al, len);
            CHECK_EQ(ff_ck(buf + al, len), naive_ck(buf + al, len));
        }
    }
    /* Extremes: all 0xff (carries everywhere), all zero. */
    memset(buf, 0xff, sizeof buf);
    for (size_t len = 0; len <= 2000; len += 13)
        CHECK_EQ(ff_ck(buf + 1, len), naive_ck(buf + 1, len));
    memset(buf, 0, sizeof buf);
    CHECK_EQ(ff_ck(buf, 1500), 0xffff);
    /* Chunked accumulation (even chunks) equals one pass; a 64 KiB buffer of 0xff. */
    static uint8_t big[65536];
    memset(big, 0xff, sizeof big);
    CHECK_EQ(ff_ck(big, sizeof big), naive_ck(big, sizeof big));
    rnd_fill(big, sizeof big);
    for (int t = 0; t < 200; t++) {
        size_t a = (rnd() % 30000) & ~(size_t)1, b = rnd() % 30000;
        uint64_t acc = ff_ck_add(ff_ck_add(ff_ck_add16(0, 0x1234), big, a), big + a, b);
        uint32_t ref = naive_sum(0, big, a + b) + 0x1234;
        CHECK_EQ(ff_ck_fold(acc), naive_fold(ref));
    }
    /* add16 takes a host-order word */
    CHECK_EQ(ff_ck_fold(ff_ck_add16(0, 0x1234)), 0x1234);
    /* Incremental update matches recomputation (RFC 1624), including 0x0000/0xffff words. */
    for (int t = 0; t < 20000; t++) {
        uint8_t h[20];
        rnd_fill(h, 20);
        h[10] = h[11] = 0;
        ff_st16(h + 10, ff_ck(h, 20));
        int w = (int)(rnd() % 10);
        if (w == 5)
            continue;   /* checksum word itself */
        uint16_t old = ff_ld16(h + 2 * w), nw = (uint16_t)(t % 3 == 0 ? 0 : t % 3 == 1 ? 0xffff : rnd());
        ff_st16(h + 2 * w, nw);
        uint16_t inc = ff_ck_update16(ff_ld16(h + 10), old, nw);
        CHECK_EQ(naive_fold(naive_sum(0, h, 10) + inc + naive_sum(0, h + 12, 8)), 0xffff);
    }
    /* pseudo-header */
    uint8_t ip[20] = { 0x45 };
    ff_st32(ip + 12, 0xc0a80001); ff_st32(ip + 16, 0x0a000001);
    CHECK_EQ(ff_ck_fold(ff_ck_pseudo4(ip, 6, 1480)),
             naive_fold(0xc0a8 + 0x0001 + 0x0a00 + 0x0001 + 6 + 1480));
    /* ff_ip4_set_csum */
    rnd_fill(ip + 1, 19);
    ip[0] = 0x45;
    ff_ip4_set_csum(ip);
    CHECK_EQ(naive_ck(ip, 20), 0);
}

/* ============================================================ GSO_NONE csum finish === */
static void test_csum_finish(void)
{
    static uint8_t pay[3000], p[3100];
    rnd_fill(pay, sizeof pay);
    for (size_t n = 0; n < 1500; n += 37) {
        for (int udp = 0; udp < 2; udp++) {
            size_t len = udp ? mk_udp(p, pay, n, 7, 0) : mk_tcp(p, pay, n, 1000, TCP_ACK, 0, 7);
            size_t at = udp ? 6 : 16;
            uint16_t want = ff_ld16(p + 20 + at);
            make_partial(p, len, at);
            struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
                .csum_start = 20, .csum_offset = (uint16_t)at };
            uint8_t *d = dup_exact(p, len);
            CHECK_EQ(ff_vnet_csum_finish(&h, d, len), 0);
            CHECK_EQ(ff_ld16(d + 20 + at), want);
            CHECK(naive_l4_ok(d, len));
            free(d);
        }
    }
    struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = 20, .csum_offset = 16 };
    uint8_t small[40] = { 0x45, [9] = 6 };
    CHECK_EQ(ff_vnet_csum_finish(&h, small, 40), 0);      /* a whole TCP header: just fits */
    CHECK_EQ(ff_vnet_csum_finish(&h, small, 39), -EINVAL);
    h.csum_start = 40;
    CHECK_EQ(ff_vnet_csum_finish(&h, small, 36), -EINVAL);
    h.csum_start = 0xffff; h.csum_offset = 0xffff;
    CHECK_EQ(ff_vnet_csum_finish(&h, small, 36), -EINVAL);
    h.flags = 0;
    CHECK_EQ(ff_vnet_csum_finish(&h, small, 36), 0);       /* nothing to do */
    h.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
    CHECK_EQ(ff_vnet_csum_finish(&h, small, 36), -EINVAL);
}

/* A UDP datagram whose checksum computes to 0 must carry 0xffff (RFC 768). */
static size_t mk_udp_zero_sum(uint8_t *p)
{
    uint8_t pay[100];
    memset(pay, 0x5a, sizeof pay);
    pay[98] = pay[99] = 0;
    size_t len = mk_udp(p, pay, sizeof pay, 1, 1);
    uint32_t s = naive_sum(0, p + 12, 8) + 17 + (uint32_t)(len - 20);
    uint16_t x = (uint16_t)~naive_fold(naive_sum(s, p + 20, len - 20));
    ff_st16(p + len - 2, x);    /* now the sum is 0xffff, the checksum 0 */
    return len;
}

static void test_udp_zero_result(void)
{
    uint8_t p[200];
    size_t len = mk_udp_zero_sum(p);
    make_partial(p, len, 6);
    struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = 20, .csum_offset = 6 };
    uint8_t *d = dup_exact(p, len);
    CHECK_EQ(ff_vnet_csum_finish(&h, d, len), 0);
    CHECK_EQ(ff_ld16(d + 26), 0xffff);
    CHECK(naive_l4_ok(d, len));
    free(d);
}

static void check_tso(const uint8_t *pay, size_t paylen, uint16_t gso, uint8_t flags, size_t optlen)
{
    struct virtio_net_hdr h;
    size_t len;
    uint8_t *sf = mk_tso(&h, pay, paylen, gso, flags, optlen, &len);
    int want = (int)((paylen + gso - 1) / gso);
    size_t hdrl = 40 + optlen;
    CHECK_EQ(ff_gso_count(&h, sf, len), want);
    int n = ff_gso_split(&h, sf, len, g_outs, SEGCAP, g_lens, MAXSEG);
    CHECK_EQ(n, want);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *s = g_outs[i];
        size_t sl = g_lens[i], pl = sl - hdrl;
        CHECK_EQ(pl, i + 1 < n ? gso : paylen - (size_t)gso * (size_t)(n - 1));
        CHECK_EQ(ff_ld16(s + 2), sl);
        CHECK_EQ(ff_ld16(s + 4), (uint16_t)(0xfffe + i));
        CHECK_EQ(naive_ck(s, 20), 0);
        CHECK(naive_l4_ok(s, sl));
        CHECK_EQ(ff_ld32(s + 24), (uint32_t)(0xfffff000u + (uint32_t)off));
        uint8_t f = flags;
        if (i + 1 < n) f &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (i) f &= (uint8_t)~TCP_CWR;
        CHECK_EQ(s[33], f);
        CHECK(memcmp(s + 40, sf + 40, optlen) == 0);
        CHECK(memcmp(s + hdrl, pay + off, pl) == 0);
        off += pl;
    }
    CHECK_EQ(off, paylen);
    /* Too few output slots, too small slots. */
    if (want > 1)
        CHECK_EQ(ff_gso_split(&h, sf, len, g_outs, SEGCAP, g_lens, want - 1), -ENOSPC);
    CHECK_EQ(ff_gso_split(&h, sf, len, g_outs, hdrl + (paylen < gso ? paylen : gso) - 1, g_lens, MAXSEG), -ENOSPC);
    free(sf);
}

/* A superframe of more segments than MAXSEG (a small MSS: 131 at 500, 1365 at 48), split in
 * chunks of 64 with ff_gso_split_range: every segment as the whole split would make it. */
static void test_split_chunks(void)
{
    static uint8_t pay[65536];
    rnd_fill(pay, sizeof pay);
    init_outs();
    const uint16_t gsos[] = { 48, 400, 500, 1448 };
    for (size_t b = 0; b < sizeof gsos / sizeof *gsos; b++) {
        struct virtio_net_hdr h;
        size_t len, paylen = 65535 - 40 - 12, off = 0;
        uint8_t *sf = mk_tso(&h, pay, paylen, gsos[b], TCP_ACK | TCP_PSH | TCP_FIN, 12, &len);
        unsigned want = (unsigned)((paylen + gsos[b] - 1) / gsos[b]), first = 0;
        CHECK_EQ(ff_gso_count(&h, sf, len), want);
        if (want > MAXSEG)
            CHECK_EQ(ff_gso_split(&h, sf, len, g_outs, SEGCAP, g_lens, MAXSEG), -ENOSPC);
        while (first < want) {
            int k = ff_gso_split_range(&h, sf, len, first, g_outs, SEGCAP, g_lens, 64);
            CHECK_EQ(k, want - first < 64 ? want - first : 64);
            if (k <= 0)
                break;
            for (int j = 0; j < k; j++) {
                unsigned i = first + (unsigned)j;
                const uint8_t *sg = g_outs[j];
                size_t sl = g_lens[j], pl = sl - 52;
                CHECK_EQ(pl, i + 1 < want ? gsos[b] : paylen - (size_t)gsos[b] * (want - 1));
                CHECK_EQ(ff_ld16(sg + 4), (uint16_t)(0xfffe + i));
                CHECK_EQ(ff_ld32(sg + 24), (uint32_t)(0xfffff000u + (uint32_t)off));
                CHECK_EQ(sg[33], i + 1 < want ? TCP_ACK : TCP_ACK | TCP_PSH | TCP_FIN);
                CHECK(naive_l4_ok(sg, sl));
                CHECK_EQ(naive_ck(sg, 20), 0);
                CHECK(memcmp(sg + 52, pay + off, pl) == 0);
                off += pl;
            }
            first += (unsigned)k;
        }
        CHECK_EQ(off, paylen);
        CHECK_EQ(ff_gso_split_range(&h, sf, len, want, g_outs, SEGCAP, g_lens, 64), -ERANGE);
        free(sf);
    }
}

static void test_split(void)
{
    static uint8_t pay[65536];
    rnd_fill(pay, sizeof pay);
    init_outs();
    const size_t sizes[] = { 1, 100, 1447, 1448, 1449, 2896, 5000, 30001, 65535 - 40 - 12 };
    const uint16_t gsos[] = { 536, 1000, 1448, 1460 };
    const uint8_t flagsets[] = { TCP_ACK, TCP_ACK | TCP_PSH, TCP_ACK | TCP_PSH | TCP_FIN,
                                 TCP_ACK | TCP_CWR, TCP_ACK | TCP_CWR | TCP_PSH | 0x40 /*ECE*/ };
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (size_t b = 0; b < sizeof gsos / sizeof *gsos; b++)
            for (size_t c = 0; c < sizeof flagsets / sizeof *flagsets; c++)
                for (size_t opt = 0; opt <= 12; opt += 12)
                    if ((sizes[a] + gsos[b] - 1) / gsos[b] <= MAXSEG)
                        check_tso(pay, sizes[a], gsos[b], flagsets[c], opt);
    check_tso(pay, 40, 1, TCP_ACK | TCP_PSH, 40);   /* max options, 1-byte segments */

    /* GSO_NONE through ff_gso_split: one segment, checksum finished. */
    static uint8_t tmp[2000];
    size_t len = mk_tcp(tmp, pay, 1000, 5, TCP_ACK, 0, 1);
    uint16_t want = ff_ld16(tmp + 36);
    make_partial(tmp, len, 16);
    struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = 20, .csum_offset = 16 };
    CHECK_EQ(ff_gso_split(&h, tmp, len, g_outs, SEGCAP, g_lens, 1), 1);
    CHECK_EQ(g_lens[0], len);
    CHECK_EQ(ff_ld16(g_outs[0] + 36), want);
    CHECK_EQ(ff_gso_split(&h, tmp, len, g_outs, len - 1, g_lens, 1), -ENOSPC);
}

static void test_split_reject(void)
{
    static uint8_t pay[4000];
    rnd_fill(pay, sizeof pay);
    init_outs();
    struct virtio_net_hdr h0, h;
    size_t len;
    uint8_t *sf = mk_tso(&h0, pay, 4000, 1448, TCP_ACK, 0, &len);
    uint8_t *bad = malloc(len);
#define REJECT(mutation) do { h = h0; memcpy(bad, sf, len); mutation; \
        CHECK_EQ(ff_gso_split(&h, bad, len, g_outs, SEGCAP, g_lens, MAXSEG), -EINVAL); \
        CHECK_EQ(ff_gso_count(&h, bad, len), -EINVAL); } while (0)
    h = h0;
    CHECK_EQ(ff_gso_split(&h, sf, len, g_outs, SEGCAP, g_lens, MAXSEG), 3);
    REJECT(h.gso_type |= VIRTIO_NET_HDR_GSO_ECN);
    REJECT(h.gso_type = VIRTIO_NET_HDR_GSO_TCPV6);
    REJECT(h.gso_type = VIRTIO_NET_HDR_GSO_UDP);
    REJECT(h.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4);     /* USO: the TUN is never offered it */
    REJECT(h.gso_type = 9);
    REJECT(h.gso_size = 0);
    REJECT(h.csum_start = 24);
    REJECT(h.csum_start = 0xffff);
    REJECT(h.csum_offset = 6);
    REJECT(bad[0] = 0x46);                 /* IHL says 24, csum_start says 20 */
    REJECT(bad[0] = 0x65);                 /* IPv6 */
    REJECT(bad[9] = 17);                   /* TCPV4 over UDP */
    REJECT(bad[6] |= 0x20);                /* MF */
    REJECT(bad[7] = 1);                    /* fragment offset */
    REJECT(bad[32] = 0x40);                /* doff 4 */
#undef REJECT
    /* doff 15 = 60-byte TCP header is within the 4 kB frame: that one is actually valid. */
    h = h0;
    memcpy(bad, sf, len);
    bad[32] = 0xf0;
    CHECK_EQ(ff_gso_split(&h, bad, len, g_outs, SEGCAP, g_lens, MAXSEG), 3);
    /* Truncations: header beyond the buffer, no payload. */
    h = h0;
    for (size_t l = 0; l <= 40; l++)
        CHECK_EQ(ff_gso_split(&h, sf, l, g_outs, SEGCAP, g_lens, MAXSEG), -EINVAL);
    CHECK_EQ(ff_gso_split(&h, sf, 41, g_outs, SEGCAP, g_lens, MAXSEG), 1);
    CHECK_EQ(ff_gso_split(&h, sf, 41, g_outs, SEGCAP, g_lens, 0), -ENOSPC);
    /* A well-formed USO superframe is refused as a whole. */
    static uint8_t udp[4100];
    size_t ulen = mk_udp(udp, pay, 4000, 1, 0);
    make_partial(udp, ulen, 6);
    h = (struct virtio_net_hdr){ .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
        .gso_type = VIRTIO_NET_HDR_GSO_UDP_L4, .gso_size = 1400, .csum_start = 20, .csum_offset = 6 };
    CHECK_EQ(ff_gso_count(&h, udp, ulen), -EINVAL);
    CHECK_EQ(ff_gso_split(&h, udp, ulen, g_outs, SEGCAP, g_lens, MAXSEG), -EINVAL);
    free(bad);
    free(sf);
}

/* ================================================================ UDP GSO planning === */
static void test_gso_plan(void)
{
    struct ff_gso_group gr[300];
    uint64_t peer[256];
    uint32_t len[256];
    /* Hand-made: A A A(short) A | B B | A | C(0) C | A x70 */
    int n = 0;
    uint64_t A = ff_peer_key(0x0a000001, 8285), B = ff_peer_key(0x0a000002, 8285), C = ff_peer_key(0x0a000001, 8286);
#define PUSH(pp, ll) do { peer[n] = (pp); len[n] = (ll); n++; } while (0)
    PUSH(A, 1400); PUSH(A, 1400); PUSH(A, 900); PUSH(A, 1400);
    PUSH(B, 500); PUSH(B, 500);
    PUSH(A, 600);
    PUSH(C, 0); PUSH(C, 10);
    for (int i = 0; i < 70; i++) PUSH(A, 100);
    int ng = ff_udp_gso_plan(peer, len, n, 64, FF_UDP_GSO_MAX_BYTES, gr, 300);
    CHECK_EQ(ng, 8);
    struct ff_gso_group want[] = {
        { 0, 3, 3700, 1400 }, { 3, 1, 1400, 0 }, { 4, 2, 1000, 500 }, { 6, 1, 600, 0 },
        { 7, 1, 0, 0 }, { 8, 1, 10, 0 }, { 9, 64, 6400, 100 }, { 73, 6, 600, 100 },
    };
    for (int i = 0; i < 8 && i < ng; i++) {
        CHECK_EQ(gr[i].start, want[i].start);
        CHECK_EQ(gr[i].count, want[i].count);
        CHECK_EQ(gr[i].bytes, want[i].bytes);
        CHECK_EQ(gr[i].gso_size, want[i].gso_size);
    }
    CHECK_EQ(ff_udp_gso_plan(peer, len, n, 0, 65000, gr, 300), -EINVAL);
    CHECK_EQ(ff_udp_gso_plan(peer, len, n, 64, 65000, gr, 3), -ENOSPC);
    CHECK_EQ(ff_udp_gso_plan(peer, len, 0, 64, 65000, gr, 0), 0);
    /* Byte cap: 50 x 1400 = 70000 > 65000 -> 46 + 4. */
    for (int i = 0; i < 50; i++) { peer[i] = A; len[i] = 1400; }
    CHECK_EQ(ff_udp_gso_plan(peer, len, 50, 128, 65000, gr, 300), 2);
    CHECK_EQ(gr[0].count, 46);
    CHECK_EQ(gr[1].count, 4);
    /* A datagram longer than a u16 gso_size never heads a group, whatever max_bytes says. */
    for (int i = 0; i < 3; i++) { peer[i] = A; len[i] = 70000; }
    CHECK_EQ(ff_udp_gso_plan(peer, len, 3, 64, 1u << 30, gr, 300), 3);
    CHECK_EQ(gr[0].gso_size, 0);
    /* Random property test: coverage, rules, and maximality. */
    for (int t = 0; t < 3000; t++) {
        n = (int)(rnd() % 256);
        int maxs = 1 + (int)(rnd() % 130);
        uint32_t maxb = rnd() % 2 ? 65000 : 1 + rnd() % 20000;
        for (int i = 0; i < n; i++) {
            peer[i] = rnd() % 8 ? (i ? peer[i - 1] : 1) : rnd() % 3;
            len[i] = rnd() % 4 ? (i ? len[i - 1] : 1400) : rnd() % 1500;
        }
        ng = ff_udp_gso_plan(peer, len, n, maxs, maxb, gr, 300);
        CHECK(ng >= 0);
        uint32_t next = 0;
        for (int k = 0; k < ng; k++) {
            const struct ff_gso_group *q = &gr[k];
            CHECK_EQ(q->start, next);
            CHECK(q->count >= 1 && (int)q->count <= maxs);
            uint64_t sum = 0;
            for (uint32_t i = q->start; i < q->start + q->count; i++) {
                sum += len[i];
                CHECK(peer[i] == peer[q->start]);
                if (i + 1 < q->start + q->count) CHECK_EQ(len[i], len[q->start]);
                else CHECK(len[i] <= len[q->start]);
            }
            CHECK_EQ(sum, q->bytes);
            if (q->count > 1) { CHECK(sum <= maxb); CHECK_EQ(q->gso_size, len[q->start]); }
            else CHECK_EQ(q->gso_size, 0);
            /* maximal: the next datagram could not have joined */
            uint32_t j = q->start + q->count, last = j - 1;
            if (j < (uint32_t)n && len[q->start] > 0)
                CHECK(peer[j] != peer[q->start] || (int)q->count == maxs || len[j] > len[q->start] ||
                      len[last] < len[q->start] || sum + len[j] > maxb);
            next = j;
        }
        CHECK_EQ(next, (uint32_t)n);
    }
#undef PUSH
}

static void test_udp_gro_split_and_cmsg(void)
{
    uint8_t buf[5000];
    const uint8_t *dg;
    size_t dl, tot;
    struct ff_gro_iter it;
    int cnt;
    struct { size_t len; int gso; int want; } cases[] = {
        { 0, 1400, 0 }, { 0, 0, 0 }, { 1400, 0, 1 }, { 4200, 1400, 3 }, { 4201, 1400, 4 },
        { 10, 1400, 1 }, { 5000, 1, 5000 }, { 5000, -5, 1 }, { 3, 65535, 1 },
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        ff_udp_gro_iter_init(&it, buf, cases[c].len, cases[c].gso);
        cnt = 0;
        tot = 0;
        while (ff_udp_gro_next(&it, &dg, &dl)) {
            CHECK(dg == buf + tot);
            CHECK(dl > 0);
            if (cases[c].gso > 0) CHECK(dl <= (size_t)cases[c].gso);
            tot += dl;
            cnt++;
        }
        CHECK_EQ(cnt, cases[c].want);
        CHECK_EQ(tot, cases[c].len);
    }
    /* UDP_SEGMENT cmsg */
    union { struct cmsghdr h; uint8_t b[64]; } ctl;
    CHECK_EQ(ff_udp_gso_cmsg(ctl.b, sizeof ctl.b, 1400), (int)CMSG_SPACE(sizeof(uint16_t)));
    CHECK_EQ(FF_UDP_GSO_CMSG_SPACE, CMSG_SPACE(sizeof(uint16_t)));
    CHECK_EQ(ctl.h.cmsg_level, SOL_UDP);
    CHECK_EQ(ctl.h.cmsg_type, UDP_SEGMENT);
    uint16_t v;
    memcpy(&v, CMSG_DATA(&ctl.h), 2);
    CHECK_EQ(v, 1400);
    CHECK_EQ(ff_udp_gso_cmsg(ctl.b, 8, 1400), -ENOSPC);
    /* UDP_GRO cmsg parse */
    struct msghdr m = { 0 };
    CHECK_EQ(ff_udp_gro_cmsg_size(&m), 0);
    m.msg_control = ctl.b;
    m.msg_controllen = CMSG_SPACE(sizeof(int));
    ctl.h.cmsg_level = SOL_UDP; ctl.h.cmsg_type = UDP_GRO; ctl.h.cmsg_len = CMSG_LEN(sizeof(int));
    int gs = 1452;
    memcpy(CMSG_DATA(&ctl.h), &gs, sizeof gs);
    CHECK_EQ(ff_udp_gro_cmsg_size(&m), 1452);
    gs = -1;
    memcpy(CMSG_DATA(&ctl.h), &gs, sizeof gs);
    CHECK_EQ(ff_udp_gro_cmsg_size(&m), -EINVAL);
    ctl.h.cmsg_type = IP_TOS;
    CHECK_EQ(ff_udp_gro_cmsg_size(&m), 0);
}

/* ================================================================ hostile inputs === */
static void test_fuzz(int iters)
{
    static uint8_t pay[65536];
    rnd_fill(pay, sizeof pay);
    init_outs();
    struct ff_gro *g = ff_gro_new(32, 0);
    uint8_t *held[32];
    int nheld = 0;
    static uint8_t tmp[70000];
    for (int t = 0; t < iters; t++) {
        /* A valid superframe or packet, then random mutations, truncation and header lies. */
        struct virtio_net_hdr h;
        size_t len, paylen = rnd() % (rnd() % 16 ? 2000 : 66000);
        int kind = (int)(rnd() % 4);
        if (kind == 0) {
            if (paylen > 65535 - 60) paylen = 65535 - 60;
            len = mk_tcp(tmp, pay, paylen, rnd(), (uint8_t)(TCP_ACK | (rnd() % 2 ? TCP_PSH : 0)),
                         (rnd() % 11) * 4, (uint16_t)rnd());
            h = (struct virtio_net_hdr){ VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                (uint16_t)rnd(), (uint16_t)(1 + rnd() % 1500), 20, 16 };
        } else if (kind == 1) {         /* USO: refused unless mutated into something else */
            if (paylen > 65535 - 28) paylen = 65535 - 28;
            len = mk_udp(tmp, pay, paylen, (uint16_t)rnd(), (int)(rnd() % 2));
            h = (struct virtio_net_hdr){ VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4,
                0, (uint16_t)(1 + rnd() % 1500), 20, 6 };
        } else {
            len = paylen;
            rnd_fill(tmp, len);
            rnd_fill((uint8_t *)&h, sizeof h);
        }
        int nmut = (int)(rnd() % 4);
        for (int k = 0; k < nmut && len; k++) {
            switch (rnd() % 6) {
            case 0: tmp[rnd() % (len < 64 ? len : 64)] = (uint8_t)rnd(); break;
            case 1: len = rnd() % (len + 1); break;
            case 2: h.csum_start = (uint16_t)(rnd() % 2 ? rnd() : rnd() % 80); break;
            case 3: h.csum_offset = (uint16_t)(rnd() % 2 ? rnd() : rnd() % 40); break;
            case 4: h.gso_size = (uint16_t)rnd(); break;
            case 5: h.gso_type = (uint8_t)(rnd() % 8); h.flags = (uint8_t)rnd(); break;
            }
        }
        uint8_t *p = dup_exact(tmp, len);
        int cnt = ff_gso_count(&h, p, len);
        int n = ff_gso_split(&h, p, len, g_outs, SEGCAP, g_lens, MAXSEG);
        CHECK(n == cnt || (n == -ENOSPC && cnt > 0));
        if (n > 0 && h.gso_type != VIRTIO_NET_HDR_GSO_NONE)
            for (int i = 0; i < n; i++) {
                CHECK(g_lens[i] <= SEGCAP);
                CHECK_EQ(naive_ck(g_outs[i], (size_t)(g_outs[i][0] & 15) * 4), 0);
                CHECK(naive_l4_ok(g_outs[i], g_lens[i]));
            }
        if (h.gso_type == VIRTIO_NET_HDR_GSO_NONE) {
            int rc = ff_vnet_csum_finish(&h, p, len);
            CHECK(rc == 0 || rc == -EINVAL);
        }
        /* GRO over the same hostile bytes (packets held until the batch is written). */
        int rc = ff_gro_add(g, p, len);
        if (rc >= 0)
            held[nheld++] = p;
        if (rc < 0 || rnd() % 16 == 0) {
            int items = ff_gro_finish(g);
            int segs = 0;
            for (int i = 0; i < items; i++) {
                struct iovec iov[FF_GRO_MAX_IOV];
                int ni = ff_gro_item_iov(g, i, iov, FF_GRO_MAX_IOV);
                CHECK(ni >= 2);
                size_t tot = 0;
                for (int k = 0; k < ni; k++) tot += iov[k].iov_len;
                CHECK(tot <= FF_VNET_HDR_LEN + 65535u);
                int c = ff_gro_item_copy(g, i, g_item, sizeof g_item);
                CHECK_EQ(c, tot);
                segs += ff_gro_item_segs(g, i);
                if (ff_gro_item_segs(g, i) > 1) {
                    const uint8_t *q = g_item + FF_VNET_HDR_LEN;
                    CHECK_EQ(ff_ld16(q + 2), tot - FF_VNET_HDR_LEN);
                    CHECK_EQ(naive_ck(q, 20), 0);
                }
            }
            CHECK_EQ(segs, nheld);
            for (int i = 0; i < nheld; i++) free(held[i]);
            nheld = 0;
            ff_gro_reset(g);
            if (rc == -ENOSPC) {
                rc = ff_gro_add(g, p, len);
                CHECK(rc == FF_GRO_NEW_ITEM);
                if (rc >= 0) held[nheld++] = p;
            }
        }
        if (rc < 0)
            free(p);
        /* UDP_GRO splitting with hostile sizes. */
        struct ff_gro_iter it;
        const uint8_t *dg;
        size_t dl, tot = 0;
        ff_udp_gro_iter_init(&it, tmp, len, rnd() % 3 ? (int)(rnd() % 70000) : -(int)(rnd() % 1000));
        while (ff_udp_gro_next(&it, &dg, &dl)) tot += dl;
        CHECK_EQ(tot, len);
    }
    for (int i = 0; i < nheld; i++) free(held[i]);
    ff_gro_free(g);
    /* Random control buffers for the UDP_GRO cmsg parser. */
    for (int t = 0; t < iters / 10; t++) {
        size_t cl = rnd() % 64;
        uint8_t *cb = malloc(cl ? cl : 1);
        rnd_fill(cb, cl);
        if (cl >= sizeof(struct cmsghdr) && rnd() % 2) {
            struct cmsghdr ch = { .cmsg_len = rnd() % 40, .cmsg_level = SOL_UDP, .cmsg_type = UDP_GRO };
            memcpy(cb, &ch, sizeof ch);
        }
        struct msghdr m = { .msg_control = cl ? cb : NULL, .msg_controllen = cl };
        int r = ff_udp_gro_cmsg_size(&m);
        CHECK(r >= -EINVAL && r <= 65535);
        free(cb);
    }
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 100000;
    test_csum();
    test_csum_finish();
    test_udp_zero_result();
    test_split();
    test_split_chunks();
    test_split_reject();
    test_gso_plan();
    test_udp_gro_split_and_cmsg();
    test_fuzz(iters);
    printf("test_offload: %d checks, %d failed (fuzz iterations %d)\n", g_checks, g_fail, iters);
    return g_fail != 0;
}
