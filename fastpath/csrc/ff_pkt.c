/* IPv4 packet checks and transforms (see ff_pkt.h). */
#include "ff_pkt.h"

#include <errno.h>
#include <string.h>

#include "ff_csum.h"

enum ff_ip4_verdict ff_ip4_validate(const uint8_t *p, size_t len)
{
    size_t ihl, tot;

    if (len < FF_IP4_HDR_MIN)
        return FF_IP4_SHORT;
    ihl = ff_ip4_hdr_len(p);
    if (ff_ip4_version(p) != 4 || ihl < FF_IP4_HDR_MIN || ihl > len)
        return FF_IP4_BAD_HEADER;
    tot = ff_ip4_tot_len(p);
    if (tot < ihl || tot > len)
        return FF_IP4_BAD_LENGTH;
    return FF_IP4_OK;
}

enum ff_ttl ff_ip4_dec_ttl(uint8_t *p)
{
    /* the TTL shares its 16-bit checksum word with the protocol byte */
    uint16_t old = ff_ld16(p + FF_IP4_TTL);

    if (p[FF_IP4_TTL] <= 1)
        return FF_TTL_EXPIRED;
    p[FF_IP4_TTL]--;
    ff_st16(p + FF_IP4_CSUM,
            ff_ck_update16(ff_ld16(p + FF_IP4_CSUM), old, ff_ld16(p + FF_IP4_TTL)));
    return FF_TTL_OK;
}

bool ff_ip4_special(uint32_t a)
{
    uint32_t a8 = a >> 24;

    return a8 == 0 || a8 == 127 || (a >> 16) == 0xa9feu || a8 >= 224;
}

/* RFC 1812 §4.3.2.7: a source that names a single host (not 0/8, loopback, multicast, class E
 * or the limited broadcast; a directed broadcast cannot be told from here). */
static bool single_host(uint32_t a)
{
    uint32_t a8 = a >> 24;

    return a8 != 0 && a8 != 127 && a8 < 224;
}

bool ff_icmp_due(const uint8_t *pkt)
{
    uint32_t dst = ff_ip4_dst(pkt);

    return pkt[FF_IP4_PROTO] != FF_IPPROTO_ICMP && (ff_ip4_frag(pkt) & FF_IP4_FRAG_OFF) == 0 &&
           single_host(ff_ip4_src(pkt)) && (dst >> 28) != 0xeu && dst != 0xffffffffu;
}

bool ff_ratelimit_take(uint64_t *tat_ns, uint64_t now_ns, uint64_t interval_ns, uint32_t burst)
{
    uint64_t tat = __atomic_load_n(tat_ns, __ATOMIC_RELAXED);
    uint64_t slack = burst ? (uint64_t)(burst - 1) * interval_ns : 0;

    if (!burst)
        return false;
    for (;;) {
        uint64_t base = tat > now_ns ? tat : now_ns;
        if (base - now_ns > slack)
            return false;                /* the bucket is empty */
        if (__atomic_compare_exchange_n(tat_ns, &tat, base + interval_ns, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return true;
    }
}

int ff_icmp_net_unreach(const uint8_t *pkt, size_t len, uint32_t tun_ip, uint8_t *out,
                        size_t outcap)
{
    uint8_t *icmp = out + FF_IP4_HDR_MIN;
    size_t quote, total;

    if (ff_ip4_validate(pkt, len) != FF_IP4_OK)
        return -EINVAL;
    if (outcap < FF_ICMP_MAX_LEN)
        return -ENOSPC;
    quote = ff_ip4_hdr_len(pkt) + FF_ICMP_QUOTE_DATA;
    if (quote > ff_ip4_tot_len(pkt))
        quote = ff_ip4_tot_len(pkt);
    total = FF_IP4_HDR_MIN + FF_ICMP_HDR_LEN + quote;

    memset(out, 0, FF_IP4_HDR_MIN + FF_ICMP_HDR_LEN);
    out[FF_IP4_VER_IHL] = 0x45;                                /* IPv4, no options */
    ff_st16(out + FF_IP4_TOT_LEN, (uint16_t)total);
    out[FF_IP4_TTL] = FF_ICMP_TTL;
    out[FF_IP4_PROTO] = FF_IPPROTO_ICMP;
    ff_st32(out + FF_IP4_SRC, tun_ip);
    memcpy(out + FF_IP4_DST, pkt + FF_IP4_SRC, 4);             /* back to the offender's source */
    ff_ip4_set_csum(out);

    icmp[FF_ICMP_TYPE] = FF_ICMP_DEST_UNREACH;
    icmp[FF_ICMP_CODE] = FF_ICMP_NET_UNREACH;
    memcpy(icmp + FF_ICMP_HDR_LEN, pkt, quote);
    ff_st16(icmp + FF_ICMP_CSUM, ff_ck(icmp, FF_ICMP_HDR_LEN + quote));
    return (int)total;
}
