/* Unit, round-trip and hostile-input tests of the offload building blocks (ff_offload.h).
 * Run under ASan+UBSan by tests/csrc/build_offload_tests.sh, or via ctest (CMakeLists globs
 * tests/csrc/test_*.c). Exit status is nonzero when any check fails. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/udp.h>

#include "ff_offload.h"

static int g_checks, g_fail;
#define CHECK(c) do { g_checks++; if (!(c)) { g_fail++; \
    if (g_fail < 50) fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); } } while (0)
#define CHECK_EQ(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); g_checks++; \
    if (a_ != b_) { g_fail++; if (g_fail < 50) fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", \
        __FILE__, __LINE__, #a, a_, #b, b_); } } while (0)

/* xorshift64*: deterministic. */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    return (uint32_t)((g_rng * 0x2545f4914f6cdd1dull) >> 32);
}
static void rnd_fill(uint8_t *p, size_t n) { for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rnd(); }

static uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t ld32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void st16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void st32(uint8_t *p, uint32_t v) { st16(p, (uint16_t)(v >> 16)); st16(p + 2, (uint16_t)v); }

/* ---- naive reference checksum (RFC 1071 literally: big-endian words, byte at a time) ---- */
static uint32_t naive_sum(uint32_t s, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        s += (i & 1) ? p[i] : (uint32_t)p[i] << 8;
    return s;
}
static uint16_t naive_fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}
static uint16_t naive_ck(const uint8_t *p, size_t n) { return (uint16_t)~naive_fold(naive_sum(0, p, n)); }
/* Full L4 checksum verification over IPv4 (includes the checksum field): 1 when valid. */
static int naive_l4_ok(const uint8_t *ip, size_t len)
{
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    uint32_t s = naive_sum(0, ip + 12, 8);
    s += ip[9];
    s += (uint32_t)(len - ihl);
    s = naive_sum(s, ip + ihl, len - ihl);
    return naive_fold(s) == 0xffff;
}
static uint16_t naive_pseudo(const uint8_t *ip, size_t len)
{
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    uint32_t s = naive_sum(0, ip + 12, 8) + ip[9] + (uint32_t)(len - ihl);
    return naive_fold(s);
}

/* ---- packet builders ---- */
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_CWR 0x80

/* IPv4 header (20 B) + TCP header (20 + optlen B) + payload; checksums valid. */
static size_t mk_tcp(uint8_t *p, const uint8_t *pay, size_t paylen, uint32_t seq, uint8_t flags,
                     size_t optlen, uint16_t id)
{
    size_t thl = 20 + optlen, len = 20 + thl + paylen;
    memset(p, 0, 20 + thl);
    p[0] = 0x45; p[1] = 0x02; st16(p + 2, (uint16_t)len); st16(p + 4, id); st16(p + 6, 0x4000);
    p[8] = 64; p[9] = 6; st32(p + 12, 0x0a010203); st32(p + 16, 0x0a020304);
    uint8_t *t = p + 20;
    st16(t, 40000); st16(t + 2, 5201); st32(t + 4, seq); st32(t + 8, 0xabcdef01);
    t[12] = (uint8_t)((thl / 4) << 4); t[13] = flags; st16(t + 14, 501);
    for (size_t i = 0; i < optlen; i++)
        t[20 + i] = (uint8_t)(i == 0 ? 1 : 0x10 + i);   /* NOP then arbitrary bytes */
    memcpy(t + thl, pay, paylen);
    st16(p + 10, naive_ck(p, 20));
    uint32_t s = naive_sum(0, p + 12, 8) + 6 + (uint32_t)(thl + paylen);
    st16(t + 16, (uint16_t)~naive_fold(naive_sum(s, t, thl + paylen)));
    return len;
}

static size_t mk_udp(uint8_t *p, const uint8_t *pay, size_t paylen, uint16_t id, int zero_csum)
{
    size_t len = 28 + paylen;
    memset(p, 0, 28);
    p[0] = 0x45; st16(p + 2, (uint16_t)len); st16(p + 4, id); p[8] = 64; p[9] = 17;
    st32(p + 12, 0x0a010203); st32(p + 16, 0x0a020304);
    st16(p + 20, 4433); st16(p + 22, 8472); st16(p + 24, (uint16_t)(8 + paylen));
    memcpy(p + 28, pay, paylen);
    st16(p + 10, naive_ck(p, 20));
    if (!zero_csum) {
        uint32_t s = naive_sum(0, p + 12, 8) + 17 + (uint32_t)(8 + paylen);
        uint16_t c = (uint16_t)~naive_fold(naive_sum(s, p + 20, 8 + paylen));
        st16(p + 26, c ? c : 0xffff);
    }
    return len;
}

/* Turn a valid packet into what TUN hands us for a superframe: L4 checksum = pseudo sum. */
static void make_partial(uint8_t *p, size_t len, size_t at)
{
    st16(p + 20 + at, naive_pseudo(p, len));
}

static uint8_t *dup_exact(const uint8_t *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    memcpy(d, p, n);
    return d;
}

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
    /* add16/add32 are host-order words */
    CHECK_EQ(ff_ck_fold(ff_ck_add16(0, 0x1234)), 0x1234);
    CHECK_EQ(ff_ck_fold(ff_ck_add32(0, 0x12345678)), naive_fold(0x1234 + 0x5678));
    /* Incremental update matches recomputation (RFC 1624), including 0x0000/0xffff words. */
    for (int t = 0; t < 20000; t++) {
        uint8_t h[20];
        rnd_fill(h, 20);
        h[10] = h[11] = 0;
        st16(h + 10, ff_ck(h, 20));
        int w = (int)(rnd() % 10);
        if (w == 5)
            continue;   /* checksum word itself */
        uint16_t old = ld16(h + 2 * w), nw = (uint16_t)(t % 3 == 0 ? 0 : t % 3 == 1 ? 0xffff : rnd());
        st16(h + 2 * w, nw);
        uint16_t inc = ff_ck_update16(ld16(h + 10), old, nw);
        CHECK_EQ(naive_fold(naive_sum(0, h, 10) + inc + naive_sum(0, h + 12, 8)), 0xffff);
        st16(h + 10, inc);
        uint32_t o32 = ld32(h + 12), n32 = rnd();
        st32(h + 12, n32);
        st16(h + 10, ff_ck_update32(inc, o32, n32));
        CHECK_EQ(naive_fold(naive_sum(0, h, 20)), 0xffff);
    }
    /* pseudo-header */
    uint8_t ip[20] = { 0x45 };
    st32(ip + 12, 0xc0a80001); st32(ip + 16, 0x0a000001);
    CHECK_EQ(ff_ck_fold(ff_ck_pseudo4(ip, 6, 1480)),
             naive_fold(0xc0a8 + 0x0001 + 0x0a00 + 0x0001 + 6 + 1480));
    /* ff_ipv4_set_csum */
    rnd_fill(ip + 1, 19);
    ip[0] = 0x45;
    ff_ipv4_set_csum(ip);
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
            uint16_t want = ld16(p + 20 + at);
            make_partial(p, len, at);
            struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
                .csum_start = 20, .csum_offset = (uint16_t)at };
            uint8_t *d = dup_exact(p, len);
            CHECK_EQ(ff_vnet_csum_finish(&h, d, len), 0);
            CHECK_EQ(ld16(d + 20 + at), want);
            CHECK(naive_l4_ok(d, len));
            free(d);
        }
    }
    struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = 20, .csum_offset = 16 };
    uint8_t small[38] = { 0 };
    CHECK_EQ(ff_vnet_csum_finish(&h, small, 38), 0);      /* field at 36..37: just fits */
    CHECK_EQ(ff_vnet_csum_finish(&h, small, 37), -EINVAL);
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
    st16(p + len - 2, x);    /* now the sum is 0xffff, the checksum 0 */
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
    CHECK_EQ(ld16(d + 26), 0xffff);
    CHECK(naive_l4_ok(d, len));
    free(d);
    uint8_t seg[300], *outs[1] = { seg };
    uint16_t sl;
    h.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4;
    h.gso_size = 1000;
    CHECK_EQ(ff_gso_split(&h, p, len, outs, sizeof seg, &sl, 1), 1);
    CHECK_EQ(ld16(seg + 26), 0xffff);
    CHECK(naive_l4_ok(seg, sl));
}

/* ================================================================ TSO / USO split === */
#define MAXSEG 128
#define SEGCAP 2048
static uint8_t g_segmem[MAXSEG][SEGCAP];
static uint8_t *g_outs[MAXSEG];
static uint16_t g_lens[MAXSEG];

static void init_outs(void)
{
    for (int i = 0; i < MAXSEG; i++)
        g_outs[i] = g_segmem[i];
}

/* Build a TSO superframe (partial csum, lying hdr_len) into an exact-size heap buffer. */
static uint8_t *mk_tso(struct virtio_net_hdr *h, const uint8_t *pay, size_t paylen, uint16_t gso,
                       uint8_t flags, size_t optlen, size_t *len)
{
    static uint8_t tmp[70000];
    *len = mk_tcp(tmp, pay, paylen, 0xfffff000u, flags, optlen, 0xfffe);
    make_partial(tmp, *len, 16);
    *h = (struct virtio_net_hdr){ .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
        .gso_type = VIRTIO_NET_HDR_GSO_TCPV4, .hdr_len = (uint16_t)*len, .gso_size = gso,
        .csum_start = 20, .csum_offset = 16 };
    return dup_exact(tmp, *len);
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
        CHECK_EQ(ld16(s + 2), sl);
        CHECK_EQ(ld16(s + 4), (uint16_t)(0xfffe + i));
        CHECK_EQ(naive_ck(s, 20), 0);
        CHECK(naive_l4_ok(s, sl));
        CHECK_EQ(ld32(s + 24), (uint32_t)(0xfffff000u + (uint32_t)off));
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

static void check_uso(const uint8_t *pay, size_t paylen, uint16_t gso, int zero)
{
    static uint8_t tmp[70000];
    size_t len = mk_udp(tmp, pay, paylen, 100, zero);
    make_partial(tmp, len, 6);
    struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM,
        .gso_type = VIRTIO_NET_HDR_GSO_UDP_L4, .hdr_len = 0, .gso_size = gso,
        .csum_start = 20, .csum_offset = 6 };
    uint8_t *sf = dup_exact(tmp, len);
    int want = (int)((paylen + gso - 1) / gso);
    int n = ff_gso_split(&h, sf, len, g_outs, SEGCAP, g_lens, MAXSEG);
    CHECK_EQ(n, want);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *s = g_outs[i];
        size_t sl = g_lens[i], pl = sl - 28;
        CHECK_EQ(pl, i + 1 < n ? gso : paylen - (size_t)gso * (size_t)(n - 1));
        CHECK_EQ(ld16(s + 2), sl);
        CHECK_EQ(ld16(s + 4), 100 + i);
        CHECK_EQ(ld16(s + 24), 8 + pl);
        CHECK_EQ(naive_ck(s, 20), 0);
        CHECK(ld16(s + 26) != 0);
        CHECK(naive_l4_ok(s, sl));
        CHECK(memcmp(s + 28, pay + off, pl) == 0);
        off += pl;
    }
    CHECK_EQ(off, paylen);
    free(sf);
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
    for (size_t a = 0; a < sizeof sizes / sizeof *sizes; a++)
        for (size_t b = 0; b < sizeof gsos / sizeof *gsos; b++)
            if ((sizes[a] + gsos[b] - 1) / gsos[b] <= MAXSEG && sizes[a] <= 65535 - 28) {
                check_uso(pay, sizes[a], gsos[b], 0);
                check_uso(pay, sizes[a], gsos[b], 1);
            }

    /* GSO_NONE through ff_gso_split: one segment, checksum finished. */
    static uint8_t tmp[2000];
    size_t len = mk_tcp(tmp, pay, 1000, 5, TCP_ACK, 0, 1);
    uint16_t want = ld16(tmp + 36);
    make_partial(tmp, len, 16);
    struct virtio_net_hdr h = { .flags = VIRTIO_NET_HDR_F_NEEDS_CSUM, .csum_start = 20, .csum_offset = 16 };
    CHECK_EQ(ff_gso_split(&h, tmp, len, g_outs, SEGCAP, g_lens, 1), 1);
    CHECK_EQ(g_lens[0], len);
    CHECK_EQ(ld16(g_outs[0] + 36), want);
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
    h.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4;
    h.csum_offset = 6;
    memcpy(bad, sf, len);
    bad[9] = 17;
    for (size_t l = 0; l <= 28; l++)
        CHECK_EQ(ff_gso_split(&h, bad, l, g_outs, SEGCAP, g_lens, MAXSEG), -EINVAL);
    CHECK_EQ(ff_gso_split(&h, bad, 29, g_outs, SEGCAP, g_lens, MAXSEG), 1);
    CHECK_EQ(ff_gso_split(&h, bad, 29, g_outs, SEGCAP, g_lens, 0), -ENOSPC);
    free(bad);
    free(sf);
}

/* ============================================================================= GRO === */
static uint8_t g_item[FF_VNET_HDR_LEN + 65536];

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
    CHECK_EQ(ld16(p + 2), len);
    CHECK_EQ(naive_ck(p, 20), 0);
    CHECK_EQ(ld16(p + 36), naive_pseudo(p, len));
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
            CHECK_EQ(rcs[0], 0);
            if (items == 1) {
                CHECK_EQ(rcs[n - 1], 1);
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
#define RECSUM(p) do { ff_ipv4_set_csum(p); st16((p) + 36, 0); \
        uint32_t s_ = naive_sum(0, (p) + 12, 8) + 6 + (uint32_t)(ld16((p) + 2) - 20); \
        st16((p) + 36, (uint16_t)~naive_fold(naive_sum(s_, (p) + 20, ld16((p) + 2) - 20u))); } while (0)

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
        case 0: st32(m + 24, ld32(m + 24) + 1); RECSUM(m); break;
        case 1: st16(m + 20, 40001); RECSUM(m); break;
        case 2: st32(m + 28, 7); RECSUM(m); break;
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
            st16(m + 2, (uint16_t)pl[1]); ff_ipv4_set_csum(m);
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
        pl[i] = mk_tcp(b[i], pay + s * 1000, 1000, 1000u * (uint32_t)s, TCP_ACK, 0, (uint16_t)i);
        if (f) { st16(b[i] + 22, 5202); RECSUM(b[i]); }
        pk[i] = b[i];
    }
    CHECK_EQ(gro_run(g, pk, pl, 6, NULL), 2);
    CHECK_EQ(ff_gro_item_segs(g, 0), 3);
    CHECK_EQ(ff_gro_item_segs(g, 1), 3);
    ff_gro_item_copy(g, 1, g_item, sizeof g_item);
    CHECK_EQ(ld16(g_item + FF_VNET_HDR_LEN + 22), 5202);

    /* A non-candidate of the flow in between is a barrier: A1, A-FIN(no data), A2 -> 3 items. */
    pl[0] = mk_tcp(b[0], pay, 1000, 0, TCP_ACK, 0, 0);
    pl[1] = mk_tcp(b[1], pay, 0, 1000, TCP_ACK | TCP_FIN, 0, 1);
    pl[2] = mk_tcp(b[2], pay + 1000, 1000, 1000, TCP_ACK, 0, 2);
    for (int i = 0; i < 3; i++) pk[i] = b[i];
    CHECK_EQ(gro_run(g, pk, pl, 3, NULL), 3);
    /* ... and so is a fragment between the same hosts. */
    BUILD3(0);
    pl[1] = mk_udp(b[1], pay, 100, 9, 0);
    b[1][6] = 0x20; ff_ipv4_set_csum(b[1]);
    b[1][9] = 6; ff_ipv4_set_csum(b[1]);
    pl[2] = mk_tcp(b[2], pay + 1000, 1000, 6000, TCP_ACK, 0, 2);   /* adjacent to the first */
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
    /* Kill switch. */
    {
        struct ff_gro *g2 = ff_gro_new(8, FF_GRO_NO_TCP);
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

static void test_gro_udp(void)
{
    static uint8_t pay[8000];
    rnd_fill(pay, sizeof pay);
    static uint8_t b[6][2000];
    uint8_t *pk[6];
    size_t pl[6];
    static uint8_t orig[4][2000];
#define BUILD4() do { for (int i = 0; i < 4; i++) { \
        pl[i] = mk_udp(b[i], pay + i * 1200, i == 3 ? 700 : 1200, (uint16_t)i, i == 1); \
        pk[i] = b[i]; memcpy(orig[i], b[i], pl[i]); } } while (0)
    BUILD4();
    struct ff_gro *off = ff_gro_new(8, 0), *on = ff_gro_new(8, FF_GRO_UDP);
    CHECK_EQ(gro_run(off, pk, pl, 4, NULL), 4);
    CHECK_EQ(gro_run(on, pk, pl, 4, NULL), 1);
    int n = ff_gro_item_copy(on, 0, g_item, sizeof g_item);
    CHECK_EQ(n, FF_VNET_HDR_LEN + 28 + 3 * 1200 + 700);
    struct virtio_net_hdr vh;
    memcpy(&vh, g_item, sizeof vh);
    const uint8_t *p = g_item + FF_VNET_HDR_LEN;
    CHECK_EQ(vh.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4);
    CHECK_EQ(vh.gso_size, 1200);
    CHECK_EQ(vh.csum_offset, 6);
    CHECK_EQ(vh.hdr_len, 28);
    CHECK_EQ(ld16(p + 24), 8 + 3 * 1200 + 700);
    CHECK_EQ(ld16(p + 26), naive_pseudo(p, 28 + 3 * 1200 + 700));
    CHECK_EQ(naive_ck(p, 20), 0);
    CHECK(memcmp(p + 28, pay, 3 * 1200 + 700) == 0);
    /* Round trip through USO split: datagrams equal the inputs except the checksum-0 one. */
    uint8_t *again = dup_exact(p, (size_t)n - FF_VNET_HDR_LEN);
    init_outs();
    CHECK_EQ(ff_gso_split(&vh, again, (size_t)n - FF_VNET_HDR_LEN, g_outs, SEGCAP, g_lens, MAXSEG), 4);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ(g_lens[i], pl[i]);
        CHECK(naive_l4_ok(g_outs[i], g_lens[i]));
        if (i != 1) CHECK(memcmp(g_outs[i], orig[i], pl[i]) == 0);
    }
    free(again);
    /* Bad UDP checksum / larger datagram / other port do not merge. */
    BUILD4();
    b[1][26] = 0x12; b[1][27] = 0x34;
    CHECK_EQ(gro_run(on, pk, pl, 4, NULL), 3);
    BUILD4();
    st16(b[2] + 22, 1); ff_ipv4_set_csum(b[2]); st16(b[2] + 26, 0);
    CHECK_EQ(gro_run(on, pk, pl, 4, NULL), 2);   /* [0,1,3] and [2]: other flows may pass */
    CHECK_EQ(ff_gro_item_segs(on, 0), 3);
    ff_gro_free(off);
    ff_gro_free(on);
#undef BUILD4
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

/* ======================================================= GRO property (lossless) === */
/* Random batches of interleaved TCP and UDP flows with random sizes, flags, gaps, bad
 * checksums, TTL/TOS/option changes, IP options, fragments and trailing bytes. Whatever GRO
 * decides, re-splitting every merged item (ff_gso_split on its vnet hdr) and taking the
 * pass-through items as they are must give back exactly the input packets, in input order
 * per flow (IP ID and IP checksum aside: a superframe's segments get ID head+i; the UDP
 * checksum aside where the input had 0). A wrong merge breaks this: a gap, a FIN or PSH in the
 * middle, a bad checksum, a different TTL or option, a larger segment after a smaller one. */
#define PB_MAX 64
struct pflow { int udp; uint16_t sport, mss; uint32_t seq, ack; uint8_t ttl, tos, opt; };

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
    if (f->udp) {
        len = mk_udp(p, pay, n, (uint16_t)rnd(), rnd() % 3 == 0);
        st16(p + 20, f->sport);
    } else {
        uint8_t fl = TCP_ACK;
        uint32_t q = rnd() % 100;
        if (q < 6) fl |= TCP_PSH;
        else if (q < 8) fl |= TCP_FIN;
        else if (q < 9) fl = TCP_SYN | TCP_ACK;
        else if (q < 10) fl = TCP_PSH;
        else if (q < 11) fl |= TCP_CWR;
        len = mk_tcp(p, pay, n, f->seq, fl, 8, (uint16_t)rnd());
        st16(p + 20, f->sport);
        st32(p + 28, f->ack);
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
        st16(p + 2, (uint16_t)len);
    } else if (m < 3) {
        p[6] |= 0x20;                           /* MF */
    }
    /* Recompute checksums for the final header (the pseudo-header ignores IP options). */
    size_t ihl = (size_t)(p[0] & 15) * 4, at = f->udp ? 6 : 16;
    ff_ipv4_set_csum(p);
    if (!(f->udp && ld16(p + ihl + 6) == 0)) {
        st16(p + ihl + at, 0);
        uint32_t s = naive_sum(0, p + 12, 8) + p[9] + (uint32_t)(len - ihl);
        uint16_t c = (uint16_t)~naive_fold(naive_sum(s, p + ihl, len - ihl));
        st16(p + ihl + at, f->udp && c == 0 ? 0xffff : c);
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
        if (resplit && (i == 4 || i == 5 || i == 10 || i == 11))
            continue;
        if (resplit && in[9] == 17 && (i == 26 || i == 27) && ld16(in + 26) == 0)
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
    struct ff_gro *g = ff_gro_new(PB_MAX, FF_GRO_UDP);
    long merged = 0, total = 0, items_total = 0;
    for (int r = 0; r < rounds; r++) {
        struct pflow fl[4];
        int nf = 1 + (int)(rnd() % 4), n = 1 + (int)(rnd() % PB_MAX);
        for (int f = 0; f < nf; f++)
            fl[f] = (struct pflow){ rnd() % 4 == 0, (uint16_t)(1000 + f), (uint16_t)(1 + rnd() % 300),
                                    rnd(), rnd(), 64, 0, 0 };
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
                int f = ol[s] >= ihl + 2 ? ld16(o + ihl) - 1000 : -1;
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

/* ================================================================ hostile inputs === */
static void test_fuzz(int iters)
{
    static uint8_t pay[65536];
    rnd_fill(pay, sizeof pay);
    init_outs();
    struct ff_gro *g = ff_gro_new(32, FF_GRO_UDP);
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
        } else if (kind == 1) {
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
                    CHECK_EQ(ld16(q + 2), tot - FF_VNET_HDR_LEN);
                    CHECK_EQ(naive_ck(q, 20), 0);
                }
            }
            CHECK_EQ(segs, nheld);
            for (int i = 0; i < nheld; i++) free(held[i]);
            nheld = 0;
            ff_gro_reset(g);
            if (rc == -ENOSPC) {
                rc = ff_gro_add(g, p, len);
                CHECK(rc == 0);
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
    test_split_reject();
    test_gro_roundtrip();
    test_gro_rules();
    test_gro_udp();
    test_gro_property(iters / 20);
    test_gso_plan();
    test_udp_gro_split_and_cmsg();
    test_fuzz(iters);
    printf("test_offload: %d checks, %d failed (fuzz iterations %d)\n", g_checks, g_fail, iters);
    return g_fail != 0;
}
