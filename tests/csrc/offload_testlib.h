/* Shared helpers of the offload C tests (test_offload.c, test_offload_gro.c): checks, a
 * deterministic RNG, a deliberately naive RFC 1071 checksum, packet and superframe builders
 * (wire loads/stores are ff_wire.h's).
 * Header-only; every helper is static and may be unused by one of the tests. */
#ifndef OFFLOAD_TESTLIB_H
#define OFFLOAD_TESTLIB_H
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/udp.h>

#include "ff_offload.h"

/* Older uapi headers (Debian 12) predate USO (Linux 6.2); the value is ABI. The fast path
 * rejects USO frames, and the tests feed it some. */
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5
#endif

static int g_checks, g_fail;
#define CHECK(c) do { g_checks++; if (!(c)) { g_fail++; \
    if (g_fail < 50) fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); } } while (0)
#define CHECK_EQ(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); g_checks++; \
    if (a_ != b_) { g_fail++; if (g_fail < 50) fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", \
        __FILE__, __LINE__, #a, a_, #b, b_); } } while (0)

/* xorshift64*: deterministic. */
static __attribute__((unused)) uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static __attribute__((unused)) uint32_t rnd(void)
{
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    return (uint32_t)((g_rng * 0x2545f4914f6cdd1dull) >> 32);
}
static __attribute__((unused)) void rnd_fill(uint8_t *p, size_t n) { for (size_t i = 0; i < n; i++) p[i] = (uint8_t)rnd(); }

/* ---- naive reference checksum (RFC 1071 literally: big-endian words, byte at a time) ---- */
static __attribute__((unused)) uint32_t naive_sum(uint32_t s, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        s += (i & 1) ? p[i] : (uint32_t)p[i] << 8;
    return s;
}
static __attribute__((unused)) uint16_t naive_fold(uint32_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}
static __attribute__((unused)) uint16_t naive_ck(const uint8_t *p, size_t n) { return (uint16_t)~naive_fold(naive_sum(0, p, n)); }
/* Full L4 checksum verification over IPv4 (includes the checksum field): 1 when valid. */
static __attribute__((unused)) int naive_l4_ok(const uint8_t *ip, size_t len)
{
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    uint32_t s = naive_sum(0, ip + 12, 8);
    s += ip[9];
    s += (uint32_t)(len - ihl);
    s = naive_sum(s, ip + ihl, len - ihl);
    return naive_fold(s) == 0xffff;
}
static __attribute__((unused)) uint16_t naive_pseudo(const uint8_t *ip, size_t len)
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
static __attribute__((unused)) size_t mk_tcp(uint8_t *p, const uint8_t *pay, size_t paylen, uint32_t seq, uint8_t flags,
                     size_t optlen, uint16_t id)
{
    size_t thl = 20 + optlen, len = 20 + thl + paylen;
    memset(p, 0, 20 + thl);
    p[0] = 0x45; p[1] = 0x02; ff_st16(p + 2, (uint16_t)len); ff_st16(p + 4, id); ff_st16(p + 6, 0x4000);
    p[8] = 64; p[9] = 6; ff_st32(p + 12, 0x0a010203); ff_st32(p + 16, 0x0a020304);
    uint8_t *t = p + 20;
    ff_st16(t, 40000); ff_st16(t + 2, 5201); ff_st32(t + 4, seq); ff_st32(t + 8, 0xabcdef01);
    t[12] = (uint8_t)((thl / 4) << 4); t[13] = flags; ff_st16(t + 14, 501);
    for (size_t i = 0; i < optlen; i++)
        t[20 + i] = (uint8_t)(i == 0 ? 1 : 0x10 + i);   /* NOP then arbitrary bytes */
    memcpy(t + thl, pay, paylen);
    ff_st16(p + 10, naive_ck(p, 20));
    uint32_t s = naive_sum(0, p + 12, 8) + 6 + (uint32_t)(thl + paylen);
    ff_st16(t + 16, (uint16_t)~naive_fold(naive_sum(s, t, thl + paylen)));
    return len;
}

static __attribute__((unused)) size_t mk_udp(uint8_t *p, const uint8_t *pay, size_t paylen, uint16_t id, int zero_csum)
{
    size_t len = 28 + paylen;
    memset(p, 0, 28);
    p[0] = 0x45; ff_st16(p + 2, (uint16_t)len); ff_st16(p + 4, id); p[8] = 64; p[9] = 17;
    ff_st32(p + 12, 0x0a010203); ff_st32(p + 16, 0x0a020304);
    ff_st16(p + 20, 4433); ff_st16(p + 22, 8472); ff_st16(p + 24, (uint16_t)(8 + paylen));
    memcpy(p + 28, pay, paylen);
    ff_st16(p + 10, naive_ck(p, 20));
    if (!zero_csum) {
        uint32_t s = naive_sum(0, p + 12, 8) + 17 + (uint32_t)(8 + paylen);
        uint16_t c = (uint16_t)~naive_fold(naive_sum(s, p + 20, 8 + paylen));
        ff_st16(p + 26, c ? c : 0xffff);
    }
    return len;
}

/* Turn a valid packet into what TUN hands us for a superframe: L4 checksum = pseudo sum. */
static __attribute__((unused)) void make_partial(uint8_t *p, size_t len, size_t at)
{
    ff_st16(p + 20 + at, naive_pseudo(p, len));
}

static __attribute__((unused)) uint8_t *dup_exact(const uint8_t *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    memcpy(d, p, n);
    return d;
}

/* ================================================================ TSO / USO split === */
#define MAXSEG 128
#define SEGCAP 2048
static __attribute__((unused)) uint8_t g_segmem[MAXSEG][SEGCAP];
static __attribute__((unused)) uint8_t *g_outs[MAXSEG];
static __attribute__((unused)) uint16_t g_lens[MAXSEG];

static __attribute__((unused)) void init_outs(void)
{
    for (int i = 0; i < MAXSEG; i++)
        g_outs[i] = g_segmem[i];
}

/* Build a TSO superframe (partial csum, lying hdr_len) into an exact-size heap buffer. */
static __attribute__((unused)) uint8_t *mk_tso(struct virtio_net_hdr *h, const uint8_t *pay, size_t paylen, uint16_t gso,
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

static __attribute__((unused)) uint8_t g_item[FF_VNET_HDR_LEN + 65536];

#endif
