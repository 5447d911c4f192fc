/* libFuzzer target: the udp->tun accept path (ff_rx_accept, docs/fastpath.md §"Validation and
 * anti-spoofing"). Input: byte 0 picks the outer sender (one of two peers or a stranger), byte
 * 1 the options (bit 0 anti-spoofing, bit 1 our lease's prefix known), the rest is the
 * datagram. The packet sits in a buffer of exactly its size, so any read past it is caught by
 * ASan; an accepted packet must be one the checks describe. */
#include <stdlib.h>
#include <string.h>

#include "ff_fwd_int.h"

static const uint32_t senders[4] = { 0xc0000201u, 0xc0000202u, 0xc0000299u, 0 };
static const struct ff_route routes[3] = {
    { .net = 0x0a0a1000u, .prefix = 20, .peer_ip = 0xc0000201u, .peer_port = 8285 },
    { .net = 0x0a0a3000u, .prefix = 20, .peer_ip = 0xc0000202u, .peer_port = 8285 },
    { .net = 0x0a0b0000u, .prefix = 24, .peer_ip = 0xc0000202u, .peer_port = 8285 },
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ff_table *t;
    static struct ff_fwd fw;

    if (!t && ff_table_build(routes, 3, &t) < 0)
        abort();
    if (size < 2)
        return 0;
    fw.flags = (data[1] & 1) ? FF_F_ANTI_SPOOF : 0;
    fw.own_mask = (data[1] & 2) ? 0xfffff000u : 0;
    fw.own_net = 0x0a0a2000u & fw.own_mask;
    size_t len = size - 2;
    uint8_t *p = malloc(len ? len : 1);
    memcpy(p, data + 2, len);
    uint32_t sender = senders[data[0] & 3];
    enum ff_verdict v = ff_rx_accept(&fw, t, p, len, sender);
    if (v == FF_FORWARD) {
        /* what was accepted is a whole IPv4 packet whose TTL was decremented */
        if (ff_ip4_validate(p, len) != FF_IP4_OK || p[FF_IP4_TTL] + 1 != data[2 + FF_IP4_TTL])
            abort();
        uint32_t dst = ff_ip4_dst(p);
        if (fw.flags && (ff_ip4_special(dst) ||
                         (fw.own_mask && (dst & fw.own_mask) != fw.own_net)))
            abort();
    }
    free(p);
    return 0;
}
