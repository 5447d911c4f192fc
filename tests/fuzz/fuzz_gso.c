/* libFuzzer target: the TUN read side (docs/fastpath.md §"Packet loops"): a fuzzed
 * virtio_net_hdr (the first 10 bytes) and frame, through ff_gso_count, ff_gso_split (in chunks
 * of a size the input picks, as the tun->udp loop does past 128 segments) and
 * ff_vnet_csum_finish. The frame and every segment buffer are exactly as large as claimed, so
 * ASan catches a write or read past them. Every segment of a superframe must be a valid IPv4
 * packet with a correct header checksum, and the segments' payloads must add up to the frame's. */
#include <stdlib.h>
#include <string.h>

#include "ff_offload.h"
#include "ff_pkt.h"

#define MAX_OUT 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct virtio_net_hdr h;
    if (size < FF_VNET_HDR_LEN + 1)
        return 0;
    memcpy(&h, data, sizeof h);
    size_t len = size - FF_VNET_HDR_LEN - 1;
    int chunk = 1 + data[FF_VNET_HDR_LEN] % MAX_OUT;
    uint8_t *pkt = malloc(len ? len : 1);
    memcpy(pkt, data + FF_VNET_HDR_LEN + 1, len);
    int n = ff_gso_count(&h, pkt, len);
    if (n > 0) {
        size_t cap = h.gso_type == VIRTIO_NET_HDR_GSO_NONE ? len : (size_t)h.gso_size + 120;
        uint8_t *outs[MAX_OUT];
        uint16_t lens[MAX_OUT];
        size_t total = 0;
        for (int i = 0; i < MAX_OUT; i++)
            outs[i] = malloc(cap ? cap : 1);
        for (unsigned first = 0; first < (unsigned)n;) {
            int k = ff_gso_split_range(&h, pkt, len, first, outs, cap, lens, chunk);
            if (k <= 0)
                abort();     /* ff_gso_count accepted the frame */
            for (int i = 0; i < k; i++) {
                if (lens[i] > cap)
                    abort();
                if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE &&
                    (ff_ip4_validate(outs[i], lens[i]) != FF_IP4_OK ||
                     ff_ck(outs[i], ff_ip4_hdr_len(outs[i])) != 0))
                    abort();
                total += lens[i] - (h.gso_type == VIRTIO_NET_HDR_GSO_NONE ? 0 :
                                    ff_ip4_hdr_len(outs[i]) + ff_tcp_hdr_len(outs[i] + ff_ip4_hdr_len(outs[i])));
            }
            first += (unsigned)k;
        }
        size_t hdrl = h.gso_type == VIRTIO_NET_HDR_GSO_NONE ? 0 :
                      ff_ip4_hdr_len(pkt) + ff_tcp_hdr_len(pkt + ff_ip4_hdr_len(pkt));
        if (total != len - hdrl)
            abort();
        if (n <= MAX_OUT && ff_gso_split(&h, pkt, len, outs, cap, lens, MAX_OUT) != n)
            abort();
        for (int i = 0; i < MAX_OUT; i++)
            free(outs[i]);
    }
    (void)ff_vnet_csum_finish(&h, pkt, len);
    free(pkt);
    return 0;
}
