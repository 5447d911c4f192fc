/* Packet helpers: validation on crafted and random bytes, TTL checksum, ICMP builder. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ff_check.h"
#include "ff_csum.h"
#include "ff_pkt.h"

static void mk_packet(uint8_t *p, size_t total, uint8_t proto, uint8_t ttl)
{
    uint16_t c;
    memset(p, 0, total);
    p[0] = 0x45;
    p[2] = (uint8_t)(total >> 8);
    p[3] = (uint8_t)total;
    p[4] = 0x12; p[5] = 0x34;
    p[6] = 0x40;                                   /* DF */
    p[8] = ttl;
    p[9] = proto;
    p[12] = 10; p[13] = 10; p[14] = 16; p[15] = 2;
    p[16] = 10; p[17] = 10; p[18] = 32; p[19] = 7;
    for (size_t i = 20; i < total; i++)
        p[i] = (uint8_t)(i * 7);
    c = ff_ck(p, 20);
    p[10] = (uint8_t)(c >> 8);
    p[11] = (uint8_t)c;
}

static void test_validate(void)
{
    uint8_t p[100];

    mk_packet(p, 60, 6, 64);
    CHECK_EQ(ff_ip4_validate(p, 60), FF_IP4_OK);
    CHECK_EQ(ff_ip4_validate(p, 100), FF_IP4_OK);      /* trailing bytes are allowed */
    CHECK_EQ(ff_ip4_validate(p, 19), FF_IP4_SHORT);
    CHECK_EQ(ff_ip4_validate(p, 0), FF_IP4_SHORT);
    CHECK_EQ(ff_ip4_validate(p, 59), FF_IP4_BAD_LENGTH);
    p[0] = 0x65;
    CHECK_EQ(ff_ip4_validate(p, 60), FF_IP4_BAD_HEADER);
    p[0] = 0x44;
    CHECK_EQ(ff_ip4_validate(p, 60), FF_IP4_BAD_HEADER);
    p[0] = 0x4f;                                         /* 60-byte header inside 60 bytes */
    CHECK_EQ(ff_ip4_validate(p, 60), FF_IP4_OK);
    CHECK_EQ(ff_ip4_validate(p, 59), FF_IP4_BAD_HEADER);
    p[0] = 0x46;
    p[2] = 0; p[3] = 20;                                 /* total < IHL*4 */
    CHECK_EQ(ff_ip4_validate(p, 60), FF_IP4_BAD_LENGTH);
}

static void test_random_bytes(void)
{
    /* Random inputs of random lengths, each in an exact-size heap block so ASan catches any
     * read past the end; the verdict must agree with a direct restatement of the rules. */
    for (int it = 0; it < 200000; it++) {
        size_t len = ff_rand() % 80;
        uint8_t *p = malloc(len ? len : 1);
        int v, want;
        for (size_t i = 0; i < len; i++)
            p[i] = (uint8_t)ff_rand();
        if (len >= 1 && (ff_rand() & 1))
            p[0] = (uint8_t)(0x40 | (p[0] & 0x0f));
        if (len >= 4 && (ff_rand() & 1)) {
            p[2] = 0;
            p[3] = (uint8_t)(ff_rand() % 90);
        }
        v = ff_ip4_validate(p, len);
        if (len < 20)
            want = FF_IP4_SHORT;
        else if ((p[0] >> 4) != 4 || (p[0] & 15) < 5 || (size_t)(p[0] & 15) * 4 > len)
            want = FF_IP4_BAD_HEADER;
        else if ((size_t)(p[2] << 8 | p[3]) < (size_t)(p[0] & 15) * 4 ||
                 (size_t)(p[2] << 8 | p[3]) > len)
            want = FF_IP4_BAD_LENGTH;
        else
            want = FF_IP4_OK;
        CHECK_EQ(v, want);
        if (v == FF_IP4_OK) {
            uint8_t out[FF_ICMP_MAX_LEN];
            int k = ff_icmp_net_unreach(p, len, 0x0a0a0000u, out, sizeof(out));
            CHECK(k >= 0 && k <= (int)FF_ICMP_MAX_LEN);
            (void)ff_ip4_dec_ttl(p);
        }
        free(p);
    }
}

static void test_ttl(void)
{
    uint8_t p[40];

    for (int ttl = 0; ttl < 256; ttl++) {
        mk_packet(p, 40, 17, (uint8_t)ttl);
        p[4] = (uint8_t)ff_rand();   /* vary the checksum */
        p[10] = p[11] = 0;
        {
            uint16_t c = ff_ck(p, 20);
            p[10] = (uint8_t)(c >> 8);
            p[11] = (uint8_t)c;
        }
        if (ttl <= 1) {
            CHECK_EQ(ff_ip4_dec_ttl(p), FF_TTL_EXPIRED);
            CHECK_EQ(p[8], ttl);
        } else {
            CHECK_EQ(ff_ip4_dec_ttl(p), FF_TTL_OK);
            CHECK_EQ(p[8], ttl - 1);
            CHECK_EQ(ff_ck(p, 20), 0);      /* a correct header sums to zero */
        }
    }
}

static void test_icmp(void)
{
    uint8_t p[100], out[FF_ICMP_MAX_LEN], small[10];
    int k;

    mk_packet(p, 100, 6, 64);
    k = ff_icmp_net_unreach(p, 100, 0x0a0a0000u, out, sizeof(out));
    CHECK_EQ(k, 20 + 8 + 20 + 8);
    CHECK_EQ(out[0], 0x45);
    CHECK_EQ(out[8], 8);
    CHECK_EQ(out[9], 1);
    CHECK_EQ(ff_ld16(out + 2), k);
    CHECK_EQ(ff_ld32(out + 12), 0x0a0a0000u);
    CHECK_EQ(ff_ld32(out + 16), ff_ip4_src(p));
    CHECK_EQ(ff_ck(out, 20), 0);
    CHECK_EQ(out[20], 3);
    CHECK_EQ(out[21], 0);
    CHECK_EQ(ff_ck(out + 20, (size_t)k - 20), 0);
    CHECK(memcmp(out + 28, p, 28) == 0);
    /* short packet: quote what exists */
    mk_packet(p, 24, 17, 64);
    CHECK_EQ(ff_icmp_net_unreach(p, 24, 1, out, sizeof(out)), 20 + 8 + 24);
    CHECK_EQ(ff_ck(out + 20, 8 + 24), 0);
    /* never about ICMP or non-first fragments */
    CHECK(ff_icmp_due(p));
    mk_packet(p, 60, 1, 64);
    CHECK(!ff_icmp_due(p));
    mk_packet(p, 60, 6, 64);
    p[7] = 1;
    CHECK(!ff_icmp_due(p));
    p[6] = 0x1f; p[7] = 0xff;                            /* the largest offset */
    CHECK(!ff_icmp_due(p));
    p[6] = 0x20; p[7] = 0;                               /* MF on the first fragment: due */
    CHECK(ff_icmp_due(p));
    p[6] = 0x40;                                         /* DF alone: due */
    CHECK(ff_icmp_due(p));
    CHECK(ff_icmp_net_unreach(p, 60, 1, out, sizeof(out)) > 0);
    CHECK_EQ(ff_icmp_net_unreach(p, 60, 1, small, sizeof(small)), -ENOSPC);
    CHECK_EQ(ff_icmp_net_unreach(p, 10, 1, out, sizeof(out)), -EINVAL);
}

int main(void)
{
    test_validate();
    test_random_bytes();
    test_ttl();
    test_icmp();
    CHECK_DONE();
}
