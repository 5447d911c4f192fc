/* The internet checksum family, the only checksum code of the fast path: the ones' complement
 * sum (RFC 1071), its incremental update (RFC 1624) and the IPv4 pseudo-header (RFC 768, 793).
 *
 * The accumulator is an unfolded 64-bit sum of the buffer read as native-endian words; only
 * ff_ck_fold turns it into a 16-bit value, returned in host order (as ff_ld16 reads it from the
 * wire). Chunks summed into one accumulator must all have even length except the last. Large
 * buffers take an AVX2 loop when the CPU has it (checked once at run time). */
#ifndef FF_CSUM_H
#define FF_CSUM_H

#include <stddef.h>
#include <stdint.h>

/* Add len bytes at p to acc (unfolded). Any alignment, any length. */
uint64_t ff_ck_add(uint64_t acc, const void *p, size_t len);
/* Add a 16-bit value given in host order (as it reads on the wire with ff_ld16). */
uint64_t ff_ck_add16(uint64_t acc, uint16_t host);
/* Fold to 16 bits, host order, NOT complemented (what CHECKSUM_PARTIAL stores). */
uint16_t ff_ck_fold(uint64_t acc);
/* Complemented checksum of a buffer, host order: ~fold(sum). Verifying a header that carries
 * its own checksum gives 0. */
uint16_t ff_ck(const void *p, size_t len);
/* IPv4 pseudo-header sum (source and destination from the IPv4 header at iph, protocol, L4
 * length in bytes). */
uint64_t ff_ck_pseudo4(const uint8_t *iph, uint8_t proto, uint16_t l4len);
/* RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m') (which avoids the -0 of eqn. 2): the checksum field
 * value csum (host order) after a 16-bit word it covers changed from old to new_. Inline: it
 * is on every forwarded packet's path (TTL-1). */
static inline uint16_t ff_ck_update16(uint16_t csum, uint16_t old, uint16_t new_)
{
    uint32_t s = (uint32_t)(uint16_t)~csum + (uint16_t)~old + new_;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}
/* Recompute the IPv4 header checksum in place (IHL from the header; the caller validated it). */
void ff_ip4_set_csum(uint8_t *iph);

#endif
