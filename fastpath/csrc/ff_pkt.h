/* IPv4 packet checks and transforms of the udp backend: validation, TTL decrement, ICMP
 * net-unreachable. Packets are raw IPv4 (flannel's udp wire format: the UDP payload is the inner
 * packet, no header of ours). Every function reads only p[0..len). */
#ifndef FF_PKT_H
#define FF_PKT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ff_wire.h"

/* ICMP reply: IPv4 header, ICMP header, the offender's header (<= 60 bytes) + 8 of its data. */
#define FF_ICMP_MAX_LEN (FF_IP4_HDR_MIN + FF_ICMP_HDR_LEN + FF_IP4_HDR_MAX + FF_ICMP_QUOTE_DATA)
#define FF_ICMP_TTL 8u           /* flannel's proxy (proxy_amd64.c) sends its ICMP with TTL 8 */

/* What ff_ip4_validate found: a usable IPv4 header, or the first rule it breaks. */
enum ff_ip4_verdict {
    FF_IP4_OK = 0,
    FF_IP4_SHORT = 1,        /* fewer than 20 bytes */
    FF_IP4_BAD_HEADER = 2,   /* version != 4, IHL < 5, or the header runs past the buffer */
    FF_IP4_BAD_LENGTH = 3,   /* total length < header length, or > the buffer */
};
enum ff_ip4_verdict ff_ip4_validate(const uint8_t *p, size_t len);

enum ff_ttl { FF_TTL_OK, FF_TTL_EXPIRED };
/* Decrement the TTL of a validated header and patch its checksum (RFC 1624). FF_TTL_EXPIRED
 * when the TTL would reach 0: the packet is to be dropped, the header is left untouched. */
enum ff_ttl ff_ip4_dec_ttl(uint8_t *p);

/* Special-purpose IPv4 addresses (RFC 6890) no overlay peer may have us deliver to, nor an ICMP
 * error be sent to: "this network" 0/8, loopback 127/8, link-local 169.254/16 (cloud metadata
 * services live there), multicast 224/4, reserved 240/4 with the limited broadcast. */
bool ff_ip4_special(uint32_t addr);

/* Whether a validated packet may get an ICMP error (RFC 1812 §4.3.2.7): never about an ICMP
 * packet (flannel's proxy skips them all, errors included), a fragment other than the first, a
 * packet to a multicast or the limited broadcast address, or one whose source is no single host
 * (0/8, loopback, multicast, class E, broadcast). */
bool ff_icmp_due(const uint8_t *pkt);

/* Token bucket as a single timestamp (GCRA), safe to share between threads: one ICMP error
 * may go at now_ns (monotonic) when fewer than burst were sent in the last burst intervals.
 * *tat_ns is the bucket (0 = full). Returns true (and takes the token) or false. */
bool ff_ratelimit_take(uint64_t *tat_ns, uint64_t now_ns, uint64_t interval_ns, uint32_t burst);
/* Build ICMP destination unreachable / net unreachable about the validated packet pkt into out
 * (outcap >= FF_ICMP_MAX_LEN), as flannel's proxy does: IP source tun_ip (host order), TTL 8,
 * payload the offender's header + up to 8 data bytes. Returns the length written, -EINVAL for
 * an invalid pkt, -ENOSPC for a short out. Builds whether or not ff_icmp_due. */
int ff_icmp_net_unreach(const uint8_t *pkt, size_t len, uint32_t tun_ip, uint8_t *out,
                        size_t outcap);

#endif
