/* libFuzzer target: ICMP generation (ff_icmp_due, ff_icmp_net_unreach; docs/fastpath.md
 * §"ICMP"). Input: the packet read from the TUN, in a buffer of exactly its size. A reply must
 * be a well-formed IPv4 ICMP destination unreachable with valid checksums, quoting no more than
 * the offender holds. */
#include <stdlib.h>
#include <string.h>

#include "ff_csum.h"
#include "ff_pkt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t out[FF_ICMP_MAX_LEN];
    uint8_t *p = malloc(size ? size : 1);
    memcpy(p, data, size);
    int k = ff_icmp_net_unreach(p, size, 0x0a0a2000u, out, sizeof out);
    if ((k < 0) != (ff_ip4_validate(p, size) != FF_IP4_OK))
        abort();
    if (k > 0) {
        (void)ff_icmp_due(p);
        size_t quote = (size_t)k - FF_IP4_HDR_MIN - FF_ICMP_HDR_LEN;
        if ((size_t)k > sizeof out || ff_ld16(out + FF_IP4_TOT_LEN) != (unsigned)k ||
            ff_ck(out, FF_IP4_HDR_MIN) != 0 || ff_ck(out + FF_IP4_HDR_MIN, (size_t)k - FF_IP4_HDR_MIN) != 0 ||
            quote > ff_ip4_tot_len(p) || memcmp(out + FF_IP4_HDR_MIN + FF_ICMP_HDR_LEN, p, quote) != 0 ||
            ff_ld32(out + FF_IP4_DST) != ff_ip4_src(p))
            abort();
    }
    free(p);
    return 0;
}
