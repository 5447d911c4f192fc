/* The wire formats the fast path reads and writes, in one place: IPv4 (RFC 791), ICMP (RFC 792),
 * UDP (RFC 768) and TCP (RFC 793, 3168) header offsets and flags, the virtio_net_hdr a TUN with
 * IFF_VNET_HDR puts before every packet, and the network-byte-order loads and stores.
 *
 * Offsets are bytes from the start of their own header (FF_TCP_SEQ is 4: the sequence number of
 * the TCP header at p + ff_ip4_hdr_len(p)). Multi-byte fields are big-endian on the wire; read
 * and write them only with ff_ld16/32 and ff_st16/32 (any alignment). */
#ifndef FF_WIRE_H
#define FF_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <linux/virtio_net.h>

/* ---- network byte order ---------------------------------------------------------------- */
static inline uint16_t ff_ld16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t ff_ld32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void ff_st16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void ff_st32(uint8_t *p, uint32_t v)
{
    ff_st16(p, (uint16_t)(v >> 16));
    ff_st16(p + 2, (uint16_t)v);
}

/* ---- IPv4 (RFC 791) ---------------------------------------------------------------------- */
#define FF_IP4_VER_IHL 0        /* version (high nibble), header length in 32-bit words (low) */
#define FF_IP4_TOS 1
#define FF_IP4_TOT_LEN 2        /* header + payload, bytes */
#define FF_IP4_ID 4
#define FF_IP4_FRAG 6           /* 3 flag bits, 13-bit fragment offset (8-byte units) */
#define FF_IP4_TTL 8
#define FF_IP4_PROTO 9
#define FF_IP4_CSUM 10
#define FF_IP4_SRC 12
#define FF_IP4_DST 16
#define FF_IP4_HDR_MIN 20u      /* bytes, IHL 5: no options */
#define FF_IP4_HDR_MAX 60u      /* bytes, IHL 15 */
#define FF_IP4_MAX_LEN 65535u   /* largest total length, bytes */

#define FF_IP4_F_RESERVED 0x8000u   /* the reserved flag bit; a packet with it is never merged */
#define FF_IP4_F_DF 0x4000u
#define FF_IP4_F_MF 0x2000u
#define FF_IP4_FRAG_OFF 0x1fffu     /* offset != 0: not the first fragment */
#define FF_IP4_FRAGMENT (FF_IP4_F_MF | FF_IP4_FRAG_OFF)   /* any fragment, first or later */

#define FF_IPPROTO_ICMP 1u
#define FF_IPPROTO_TCP 6u
#define FF_IPPROTO_UDP 17u
#define FF_L4_PORTS_LEN 4u          /* source + destination port: the first 4 bytes of TCP and UDP */

static inline unsigned ff_ip4_version(const uint8_t *p) { return p[FF_IP4_VER_IHL] >> 4; }
static inline size_t ff_ip4_hdr_len(const uint8_t *p) { return (size_t)(p[FF_IP4_VER_IHL] & 0x0f) * 4; }
static inline uint16_t ff_ip4_tot_len(const uint8_t *p) { return ff_ld16(p + FF_IP4_TOT_LEN); }
static inline uint16_t ff_ip4_frag(const uint8_t *p) { return ff_ld16(p + FF_IP4_FRAG); }
static inline uint32_t ff_ip4_src(const uint8_t *p) { return ff_ld32(p + FF_IP4_SRC); }
static inline uint32_t ff_ip4_dst(const uint8_t *p) { return ff_ld32(p + FF_IP4_DST); }

/* ---- ICMP (RFC 792) ---------------------------------------------------------------------- */
#define FF_ICMP_TYPE 0
#define FF_ICMP_CODE 1
#define FF_ICMP_CSUM 2
#define FF_ICMP_HDR_LEN 8u          /* type, code, checksum, 4 unused bytes (destination unreachable) */
#define FF_ICMP_DEST_UNREACH 3u
#define FF_ICMP_NET_UNREACH 0u      /* code of FF_ICMP_DEST_UNREACH */
#define FF_ICMP_QUOTE_DATA 8u       /* bytes of the offender's payload quoted after its IP header */

/* ---- UDP (RFC 768) ----------------------------------------------------------------------- */
#define FF_UDP_SPORT 0
#define FF_UDP_DPORT 2
#define FF_UDP_LEN 4                /* header + payload, bytes */
#define FF_UDP_CSUM 6               /* 0 = no checksum (IPv4); a computed 0 is sent as 0xffff */
#define FF_UDP_HDR_LEN 8u

/* ---- TCP (RFC 793, RFC 3168 for CWR/ECE) --------------------------------------------------- */
#define FF_TCP_SPORT 0
#define FF_TCP_DPORT 2
#define FF_TCP_SEQ 4
#define FF_TCP_ACK 8
#define FF_TCP_DOFF 12              /* header length in 32-bit words (high nibble), reserved (low) */
#define FF_TCP_FLAGS 13
#define FF_TCP_WINDOW 14
#define FF_TCP_CSUM 16
#define FF_TCP_HDR_MIN 20u          /* bytes, no options */

#define FF_TCP_F_FIN 0x01u
#define FF_TCP_F_SYN 0x02u
#define FF_TCP_F_RST 0x04u
#define FF_TCP_F_PSH 0x08u
#define FF_TCP_F_ACK 0x10u
#define FF_TCP_F_URG 0x20u
#define FF_TCP_F_ECE 0x40u
#define FF_TCP_F_CWR 0x80u

static inline size_t ff_tcp_hdr_len(const uint8_t *tcp) { return (size_t)(tcp[FF_TCP_DOFF] >> 4) * 4; }

/* ---- virtio_net_hdr (linux/virtio_net.h; a TUN opened with IFF_VNET_HDR) ------------------
 * Ten bytes before every packet read from or written to the TUN. Its fields are host-endian
 * (legacy virtio, the TUN default on little-endian hosts). flags: VIRTIO_NET_HDR_F_NEEDS_CSUM
 * (the L4 checksum field holds the pseudo-header sum; csum_start/csum_offset locate it);
 * gso_type: VIRTIO_NET_HDR_GSO_NONE or _TCPV4 (gso_size payload bytes per segment). hdr_len is
 * a hint the kernel may set to anything (it is never trusted here). */
#define FF_VNET_HDR_LEN 10u         /* sizeof(struct virtio_net_hdr) */

#endif
