/* IPv4 packet helpers for the udp backend: validation, TTL decrement, ICMP net-unreachable.
 * Packets are raw IPv4 (the flannel udp wire format: UDP payload = inner packet, no header). */
#ifndef FF_PKT_H
#define FF_PKT_H

#include <stddef.h>
#include <stdint.h>

#define FF_IPV4_MIN_HDR 20u
/* ICMP reply = 20 (IP) + 8 (ICMP) + original header (<= 60) + 8 bytes */
#define FF_ICMP_MAX_LEN (20u + 8u + 60u + 8u)
#define FF_ICMP_TTL 8u           /* flannel proxy_amd64.c uses TTL 8 for its ICMP replies */

enum ff_verdict {
    FF_PKT_OK = 0,
    FF_PKT_SHORT = 1,        /* fewer than 20 bytes */
    FF_PKT_BAD_HEADER = 2,   /* version != 4, IHL < 5, or header beyond the buffer */
    FF_PKT_BAD_LENGTH = 3,   /* total length < IHL*4 or > buffer length */
};

/* Returns an ff_verdict; never reads beyond p[len-1]. */
int ff_ipv4_validate(const uint8_t *p, size_t len);

static inline uint16_t ff_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t ff_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint32_t ff_ipv4_src(const uint8_t *p) { return ff_get32(p + 12); }
static inline uint32_t ff_ipv4_dst(const uint8_t *p) { return ff_get32(p + 16); }
static inline uint16_t ff_ipv4_totlen(const uint8_t *p) { return ff_get16(p + 2); }

/* Decrement the TTL of a validated header, patching the checksum incrementally (RFC 1624 eqn. 3).
 * Returns 0, or -1 when the TTL would reach 0 (packet must be dropped; header untouched). */
int ff_ipv4_dec_ttl(uint8_t *p);

/* Internet checksum (RFC 1071) of len bytes, folded and complemented. */
uint16_t ff_csum(const uint8_t *p, size_t len);

/* Build ICMP type 3 code 0 (net unreachable) for the validated packet pkt into out (capacity
 * outcap >= FF_ICMP_MAX_LEN), as flannel's proxy does: IP source = tun_ip (host order), TTL 8,
 * payload = original header + up to 8 bytes. Returns the length written, 0 when no ICMP is due
 * (the offender is ICMP or a non-first fragment), or -EINVAL / -ENOSPC. */
int ff_icmp_net_unreach(const uint8_t *pkt, size_t len, uint32_t tun_ip, uint8_t *out, size_t outcap);

#endif
