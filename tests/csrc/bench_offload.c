/* Micro-benchmarks of the offload building blocks (not a test; an EXCLUDE_FROM_ALL target):
 *   cmake -S . -B _build && cmake --build _build --target bench_offload && _build/bench_offload
 * Prints ns per operation, best of 5 runs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ff_offload.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static volatile uint64_t g_sink;

/* IPv4+TCP superframe, payload paylen, checksums set (full), as a TSO frame would look. */
static size_t mk_frame(uint8_t *p, size_t paylen)
{
    memset(p, 0, 52);
    p[0] = 0x45; ff_st16(p + 2, (uint16_t)(52 + paylen)); ff_st16(p + 6, 0x4000); p[8] = 64; p[9] = 6;
    p[12] = 10; p[15] = 1; p[16] = 10; p[19] = 2;
    p[20] = 0x9c; p[21] = 0x40; p[22] = 0x14; p[23] = 0x51;
    p[32] = 8 << 4; p[33] = 0x10; p[34] = 1;
    for (size_t i = 0; i < paylen; i++)
        p[52 + i] = (uint8_t)(i * 7);
    ff_ip4_set_csum(p);
    uint16_t c = (uint16_t)~ff_ck_fold(ff_ck_add(ff_ck_pseudo4(p, 6, (uint16_t)(32 + paylen)), p + 20, 32 + paylen));
    ff_st16(p + 36, c);
    return 52 + paylen;
}

#define BEST(label, iters, per, body) do { double best = 1e30; \
    for (int r_ = 0; r_ < 5; r_++) { double t0_ = now_ns(); \
        for (long i_ = 0; i_ < (iters); i_++) { body; } \
        double d_ = (now_ns() - t0_) / (double)(iters); if (d_ < best) best = d_; } \
    printf("%-44s %10.1f ns  (%.2f GB/s)\n", label, best, (double)(per) / best); } while (0)

int main(void)
{
    static uint8_t buf[65536 + 64];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)(i * 131 + 7);

    BEST("checksum 1500 B", 2000000, 1500, g_sink += ff_ck(buf, 1500));
    BEST("checksum 1500 B, odd address", 2000000, 1500, g_sink += ff_ck(buf + 1, 1500));
    BEST("checksum 64 KiB", 20000, 65536, g_sink += ff_ck(buf, 65536));

    /* TSO split of a 64 KiB superframe into 1448-byte segments (46 segments). */
    static uint8_t sf[65536];
    size_t len = mk_frame(sf, 65535 - 52);
    struct virtio_net_hdr h = { VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 52, 1448, 20, 16 };
    static uint8_t segmem[64][2048];
    uint8_t *outs[64];
    uint16_t lens[64];
    for (int i = 0; i < 64; i++)
        outs[i] = segmem[i];
    int nseg = ff_gso_split(&h, sf, len, outs, 2048, lens, 64);
    printf("(split gives %d segments)\n", nseg);
    BEST("TSO split 64 KiB -> 1448 B segments", 20000, len, g_sink += (uint64_t)ff_gso_split(&h, sf, len, outs, 2048, lens, 64));

    /* GRO: the 46 segments back into one item (copies of the segments, heads rewritten). */
    static uint8_t pk[64][2048];
    struct ff_gro *g = ff_gro_new(64, 0);
    struct iovec iov[FF_GRO_MAX_IOV];
    BEST("GRO 46 segments -> 1 item (+iov)", 20000, len, {
        ff_gro_reset(g);
        for (int k = 0; k < nseg; k++) {
            memcpy(pk[k], segmem[k], 52);   /* restore the head the previous round rewrote */
            if (!i_) memcpy(pk[k], segmem[k], lens[k]);
            ff_gro_add(g, pk[k], lens[k]);
        }
        int items = ff_gro_finish(g);
        g_sink += (uint64_t)items + (uint64_t)ff_gro_item_iov(g, 0, iov, FF_GRO_MAX_IOV);
    });
    ff_gro_reset(g);
    for (int k = 0; k < nseg; k++) {
        memcpy(pk[k], segmem[k], lens[k]);
        ff_gro_add(g, pk[k], lens[k]);
    }
    printf("(GRO gives %d item(s), first of %d segments)\n", ff_gro_finish(g), ff_gro_item_segs(g, 0));
    ff_gro_free(g);

    uint64_t peer[128];
    uint32_t dl[128];
    struct ff_gso_group gr[128];
    for (int i = 0; i < 128; i++) {
        peer[i] = (uint64_t)(i / 40);
        dl[i] = i % 40 == 39 ? 700 : 1476;
    }
    BEST("UDP GSO plan, 128 datagrams", 1000000, 0,
         g_sink += (uint64_t)ff_udp_gso_plan(peer, dl, 128, 64, FF_UDP_GSO_MAX_BYTES, gr, 128));
    return 0;
}
