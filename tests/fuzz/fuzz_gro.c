/* libFuzzer target: userspace GRO (docs/fastpath.md §"Offload tier"): a fuzzed sequence of
 * packets (each a 2-byte big-endian length and that many bytes, up to 64 packets), offered to
 * ff_gro one batch at a time, each packet in a buffer of exactly its size. Whatever is merged
 * must come out as a superframe ff_gso_split accepts and cuts back into as many segments, and
 * the items must hold every input packet once. The hash key is fixed (reproducible runs). */
#include <stdlib.h>
#include <string.h>

#include "ff_offload.h"

#define MAX_PKTS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ff_gro *g;
    static uint8_t item[FF_VNET_HDR_LEN + 65536];
    static uint8_t seg[MAX_PKTS][65536];
    static const uint64_t key[4] = { 1, 3, 5, 7 };
    uint8_t *pk[MAX_PKTS];
    int n = 0;

    if (!g) {
        g = ff_gro_new(MAX_PKTS, 0);
        if (!g)
            abort();
        ff_gro_set_key(g, key);
    }
    ff_gro_set_flags(g, size && (data[0] & 0x80) ? FF_GRO_NO_TCP : 0);
    for (size_t off = size ? 1 : 0; off + 2 <= size && n < MAX_PKTS;) {
        size_t len = ff_ld16(data + off);
        off += 2;
        if (len > size - off)
            len = size - off;
        pk[n] = malloc(len ? len : 1);
        memcpy(pk[n], data + off, len);
        off += len;
        if (ff_gro_add(g, pk[n], len) < 0)
            abort();
        n++;
    }
    int items = ff_gro_finish(g), segs = 0;
    for (int i = 0; i < items; i++) {
        int s = ff_gro_item_segs(g, i);
        int m = ff_gro_item_copy(g, i, item, sizeof item);
        if (s < 1 || m < (int)FF_VNET_HDR_LEN)
            abort();
        segs += s;
        if (s > 1) {
            struct virtio_net_hdr vh;
            uint8_t *outs[MAX_PKTS];
            uint16_t lens[MAX_PKTS];
            memcpy(&vh, item, sizeof vh);
            for (int k = 0; k < MAX_PKTS; k++)
                outs[k] = seg[k];
            if (ff_gso_split(&vh, item + FF_VNET_HDR_LEN, (size_t)m - FF_VNET_HDR_LEN, outs,
                             sizeof seg[0], lens, MAX_PKTS) != s)
                abort();
        }
    }
    if (segs != n)
        abort();
    ff_gro_reset(g);
    for (int i = 0; i < n; i++)
        free(pk[i]);
    return 0;
}
