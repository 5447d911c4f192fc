/* IPv4 packet helpers (see ff_pkt.h). */
#include "ff_pkt.h"

#include <errno.h>
#include <string.h>

#define IPPROTO_ICMP_ 1u
#define ICMP_DEST_UNREACH_ 3u
#define ICMP_NET_UNREACH_ 0u

int ff_ipv4_validate(const uint8_t *p, size_t len)
{
    size_t ihl, tot;

    if (len < FF_IPV4_MIN_HDR)
        return FF_PKT_SHORT;
    ihl = (size_t)(p[0] & 0x0f) * 4;
    if ((p[0] >> 4) != 4 || ihl < FF_IPV4_MIN_HDR || ihl > len)
        return FF_PKT_BAD_HEADER;
    tot = ff_ipv4_totlen(p);
    if (tot < ihl || tot > len)
        return FF_PKT_BAD_LENGTH;
    return FF_PKT_OK;
}

int ff_ipv4_dec_ttl(uint8_t *p)
{
    uint32_t sum;
    uint16_t old_word, new_word;

    if (p[8] <= 1)
        return -1;
    /* RFC 1624: HC' = ~(~HC + ~m + m'), m = the 16-bit word holding TTL and protocol */
    old_word = ff_get16(p + 8);
    p[8]--;
    new_word = ff_get16(p + 8);
    sum = (uint16_t)~ff_get16(p + 10);
    sum += (uint16_t)~old_word;
    sum += new_word;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (uint16_t)~sum;
    p[10] = (uint8_t)(sum >> 8);
    p[11] = (uint8_t)sum;
    return 0;
}

uint16_t ff_csum(const uint8_t *p, size_t len)
{
    uint64_t sum = 0;
    size_t i;

    for (i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (i < len)
        sum += (uint32_t)p[i] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

int ff_icmp_net_unreach(const uint8_t *pkt, size_t len, uint32_t tun_ip, uint8_t *out, size_t outcap)
{
    size_t ihl, quote, total;

    if (ff_ipv4_validate(pkt, len) != FF_PKT_OK)
        return -EINVAL;
    if (outcap < FF_ICMP_MAX_LEN)
        return -ENOSPC;
    /* RFC 1812 4.3.2.7 / flannel: no ICMP errors about ICMP or about non-first fragments */
    if (pkt[9] == IPPROTO_ICMP_ || (ff_get16(pkt + 6) & 0x1fff) != 0)
        return 0;
    ihl = (size_t)(pkt[0] & 0x0f) * 4;
    quote = ihl + 8;
    if (quote > ff_ipv4_totlen(pkt))
        quote = ff_ipv4_totlen(pkt);
    total = 20 + 8 + quote;

    memset(out, 0, 28);
    out[0] = 0x45;
    put16(out + 2, (uint16_t)total);
    out[8] = FF_ICMP_TTL;
    out[9] = IPPROTO_ICMP_;
    put32(out + 12, tun_ip);
    memcpy(out + 16, pkt + 12, 4);              /* back to the offender's source */
    put16(out + 10, ff_csum(out, 20));

    out[20] = ICMP_DEST_UNREACH_;
    out[21] = ICMP_NET_UNREACH_;
    memcpy(out + 28, pkt, quote);
    put16(out + 22, ff_csum(out + 20, 8 + quote));
    return (int)total;
}
