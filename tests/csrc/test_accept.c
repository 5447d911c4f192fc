/* The udp->tun accept path (ff_rx_accept, issue 8 defect 10): with anti-spoofing a peer may
 * only have packets written into our TUN for our own subnet, never for a special address;
 * each refusal has its reason. Also the special-address set and the ICMP token bucket.
 * Exit status is nonzero when any check fails. */
#include <string.h>

#include "ff_check.h"
#include "ff_csum.h"
#include "ff_fwd_int.h"

#define PEER 0xc0000201u           /* 192.0.2.1, the peer owning 10.10.16.0/20 */
#define PEER_SRC 0x0a0a1005u       /* 10.10.16.5 */
#define OWN_NET 0x0a0a2000u        /* our lease 10.10.32.0/20 */

static void mk(uint8_t *p, uint32_t src, uint32_t dst)
{
    memset(p, 0, 28);
    p[0] = 0x45;
    p[3] = 28;
    p[8] = 64;
    p[9] = 17;
    ff_st32(p + 12, src);
    ff_st32(p + 16, dst);
    ff_ip4_set_csum(p);
}

static enum ff_verdict verdict(const struct ff_fwd *fw, const struct ff_table *t, uint32_t src,
                               uint32_t dst, uint32_t sender)
{
    uint8_t p[28];
    mk(p, src, dst);
    return ff_rx_accept(fw, t, p, sizeof p, sender);
}

static void test_destinations(void)
{
    struct ff_route r = {.net = 0x0a0a1000u, .prefix = 20, .peer_ip = PEER, .peer_port = 8285};
    struct ff_table *t;
    struct ff_fwd fw;
    CHECK_EQ(ff_table_build(&r, 1, &t), 0);
    memset(&fw, 0, sizeof fw);
    fw.flags = FF_F_ANTI_SPOOF;
    fw.own_mask = 0xfffff000u;
    fw.own_net = OWN_NET;
    static const struct { uint32_t dst; enum ff_verdict v; } cases[] = {
        { 0x0a0a2007u, FF_FORWARD },          /* a container of ours */
        { OWN_NET, FF_FORWARD },              /* our TUN address (ping flannel0) */
        { 0x0a0a2ffeu, FF_FORWARD },
        { 0x0a0a2fffu, FF_DROP_DST_SPECIAL }, /* our subnet's broadcast */
        { 0x7f000001u, FF_DROP_DST_SPECIAL }, /* loopback */
        { 0xa9fea9feu, FF_DROP_DST_SPECIAL }, /* 169.254.169.254, a metadata service */
        { 0xe0000001u, FF_DROP_DST_SPECIAL }, /* multicast */
        { 0xffffffffu, FF_DROP_DST_SPECIAL }, /* limited broadcast */
        { 0x00000000u, FF_DROP_DST_SPECIAL },
        { 0xf0000001u, FF_DROP_DST_SPECIAL }, /* class E */
        { 0x0a0a3001u, FF_DROP_DST_FOREIGN }, /* the next lease */
        { 0x0a0a1007u, FF_DROP_DST_FOREIGN }, /* the sender's own subnet */
        { 0xc0000202u, FF_DROP_DST_FOREIGN }, /* the underlay */
        { 0x08080808u, FF_DROP_DST_FOREIGN },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        enum ff_verdict v = verdict(&fw, t, PEER_SRC, cases[i].dst, PEER);
        if (v != cases[i].v)
            fprintf(stderr, "dst %08x: verdict %d, want %d\n", cases[i].dst, v, cases[i].v);
        CHECK_EQ(v, cases[i].v);
    }
    /* The sender checks come first. */
    CHECK_EQ(verdict(&fw, t, PEER_SRC, 0x7f000001u, PEER + 1), FF_DROP_UNKNOWN_SENDER);
    CHECK_EQ(verdict(&fw, t, 0x0a0a3005u, 0x7f000001u, PEER), FF_DROP_SPOOFED);
    /* Our prefix not given: the special addresses only. */
    fw.own_mask = fw.own_net = 0;
    CHECK_EQ(verdict(&fw, t, PEER_SRC, 0x08080808u, PEER), FF_FORWARD);
    CHECK_EQ(verdict(&fw, t, PEER_SRC, 0xa9fea9feu, PEER), FF_DROP_DST_SPECIAL);
    /* A /31 or /32 lease has no broadcast address. */
    fw.own_mask = 0xffffffffu;
    fw.own_net = OWN_NET;
    CHECK_EQ(verdict(&fw, t, PEER_SRC, OWN_NET, PEER), FF_FORWARD);
    /* Anti-spoofing off: flannel's behaviour, any destination. */
    fw.flags = 0;
    CHECK_EQ(verdict(&fw, t, PEER_SRC, 0x7f000001u, PEER + 1), FF_FORWARD);
    ff_table_free(t);
}

static void test_special(void)
{
    CHECK(ff_ip4_special(0x00000000u) && ff_ip4_special(0x00ffffffu));
    CHECK(ff_ip4_special(0x7f000001u) && ff_ip4_special(0x7fffffffu));
    CHECK(ff_ip4_special(0xa9fe0000u) && ff_ip4_special(0xa9feffffu));
    CHECK(ff_ip4_special(0xe0000000u) && ff_ip4_special(0xffffffffu));
    CHECK(!ff_ip4_special(0x01000000u) && !ff_ip4_special(0x0a000001u));
    CHECK(!ff_ip4_special(0xa9fd0001u) && !ff_ip4_special(0xa9ff0001u));
    CHECK(!ff_ip4_special(0xdfffffffu) && !ff_ip4_special(0x80000001u));
}

/* The token bucket: a burst, then one per interval; never more however many threads ask. */
static void test_ratelimit(void)
{
    const uint64_t iv = 10 * 1000 * 1000;   /* 10 ms */
    uint64_t tat = 0, now = 5 * iv;
    int got = 0;
    for (int i = 0; i < 100; i++)
        got += ff_ratelimit_take(&tat, now, iv, 20);
    CHECK_EQ(got, 20);
    CHECK(!ff_ratelimit_take(&tat, now + iv / 2, iv, 20));
    CHECK(ff_ratelimit_take(&tat, now + iv, iv, 20));
    CHECK(!ff_ratelimit_take(&tat, now + iv, iv, 20));
    got = 0;
    for (uint64_t k = 0; k < 1000; k++)      /* 1000 asks over 10 intervals */
        got += ff_ratelimit_take(&tat, now + iv + k * iv / 100, iv, 20);
    CHECK(got <= 12 && got >= 9);
    tat = 0;
    CHECK(ff_ratelimit_take(&tat, 100 * iv, iv, 1));
    CHECK(!ff_ratelimit_take(&tat, 100 * iv, iv, 1));
    CHECK(!ff_ratelimit_take(&tat, 100 * iv, iv, 0));
}

int main(void)
{
    test_destinations();
    test_special();
    test_ratelimit();
    CHECK_DONE();
}
