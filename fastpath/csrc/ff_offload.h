/* Offload tier building blocks (PERF.md §1.2, DESIGN.md tier 2): pure packet transforms, no I/O.
 *
 *   ff_csum.c  internet checksum (RFC 1071/1624), IPv4 pseudo-header
 *   ff_gso.c   virtio_net_hdr handling of TUN reads: finish CHECKSUM_PARTIAL, split TSO/USO
 *              superframes; UDP_SEGMENT send planning; UDP_GRO receive splitting
 *   ff_gro.c   userspace TCP (and optional UDP) GRO of decapsulated IPv4 packets before the
 *              TUN write, zero-copy (the output is iovecs over the caller's buffers)
 *
 * Every function returns a count, 0, or -errno; none allocates except ff_gro_new, none prints.
 * All lengths coming from packets or the kernel are checked before use.
 * Inner packets are IPv4 only (flannel's udp backend is IPv4); IPv6 GSO types are rejected.
 * virtio_net_hdr fields are host-endian (legacy virtio / TUN default on little-endian hosts). */
#ifndef FF_OFFLOAD_H
#define FF_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <linux/virtio_net.h>

/* Older uapi headers (Debian 12) predate USO (Linux 6.2); the values are ABI. */
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5
#endif
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

#define FF_VNET_HDR_LEN 10u            /* sizeof(struct virtio_net_hdr) */
#define FF_IP_MAXPACKET 65535u         /* IPv4 total length limit */
#define FF_UDP_GSO_MAX_BYTES 65000u    /* per-sendmsg payload cap used by Nebula/wireguard-go */
#define FF_UDP_GSO_MAX_SEGS_OLD 64     /* UDP_MAX_SEGMENTS before Linux 6.9 */
#define FF_UDP_GSO_MAX_SEGS_NEW 128    /* from Linux 6.9 (commit 1382e3b6a350) */

/* ---------------------------------------------------------------- checksums (ff_csum.c) ---
 * The accumulator is a 64-bit sum of the buffer read as native-endian words; only folding turns
 * it into a 16-bit value, returned in host order (as read with ff_get16 from the wire). Chunks
 * summed into one accumulator must all have even length except the last. */

/* Add len bytes at p to acc (unfolded). Any alignment, any length. */
uint64_t ff_ck_add(uint64_t acc, const void *p, size_t len);
/* Add a 16-/32-bit value given in host order (as it reads on the wire with ff_get16/32). */
uint64_t ff_ck_add16(uint64_t acc, uint16_t host);
uint64_t ff_ck_add32(uint64_t acc, uint32_t host);
/* Fold to 16 bits, host order, NOT complemented (what CHECKSUM_PARTIAL stores). */
uint16_t ff_ck_fold(uint64_t acc);
/* Complemented checksum of a buffer, host order: ~fold(sum). Verifying a header that carries
 * its own checksum gives 0. */
uint16_t ff_ck(const void *p, size_t len);
/* IPv4 pseudo-header sum (src, dst from the IPv4 header at iph, protocol, L4 length). */
uint64_t ff_ck_pseudo4(const uint8_t *iph, uint8_t proto, uint16_t l4len);
/* RFC 1624 eqn. 3 incremental update of checksum field value csum (host order) when a 16-bit
 * word changes from old to new. */
uint16_t ff_ck_update16(uint16_t csum, uint16_t old, uint16_t new_);
uint16_t ff_ck_update32(uint16_t csum, uint32_t old, uint32_t new_);
/* Recompute the IPv4 header checksum in place (IHL from the header; caller validated it). */
void ff_ipv4_set_csum(uint8_t *iph);

/* -------------------------------------------------- TUN read side: vnet hdr (ff_gso.c) --- */

/* For a GSO_NONE read with VIRTIO_NET_HDR_F_NEEDS_CSUM: finish the partial L4 checksum in place
 * (the field already holds the pseudo-header sum; the kernel's skb_checksum_help semantics, a
 * result of 0 is written as 0xffff). No-op (0) without NEEDS_CSUM. -EINVAL when csum_start /
 * csum_offset do not lie inside pkt[0..len), or gso_type is not NONE. */
int ff_vnet_csum_finish(const struct virtio_net_hdr *h, uint8_t *pkt, size_t len);

/* Number of segments ff_gso_split would produce for this superframe (1 for GSO_NONE), or
 * -EINVAL for a frame it would reject. Lets the loop make room before splitting. */
int ff_gso_count(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len);

/* Shape of the split, for laying out send buffers: returns 0 or -EINVAL (as ff_gso_count). */
struct ff_gso_info {
    int nsegs;          /* segments the split produces (>= 1) */
    uint16_t hdr_len;   /* IP + TCP/UDP header bytes copied into every segment; 0 for GSO_NONE */
    uint16_t seg_len;   /* length of every segment but the last (hdr_len + gso_size) */
    uint16_t last_len;  /* length of the last segment (<= seg_len) */
};
int ff_gso_parse(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                 struct ff_gso_info *info);

/* Split a TSO (GSO_TCPV4) or USO (GSO_UDP_L4 over IPv4) superframe of len bytes (the bytes
 * after the vnet hdr) into segments of h->gso_size payload bytes, segment i written to out[i]
 * (capacity out_cap each) with its length in seg_lens[i]; out[] may point straight into
 * sendmmsg buffers. Per segment: IP total length, ID (+i) and header checksum; TCP seq
 * (+i*gso_size), FIN/PSH only on the last, CWR only on the first; UDP length; full L4 checksum
 * (a UDP result of 0 is sent as 0xffff). hdr_len from the kernel is ignored (it may cover the
 * whole first packet on FORWARD paths); the header length is IHL*4 + doff*4 (or + 8).
 * GSO_NONE is handled too: one segment (a copy), L4 checksum finished if NEEDS_CSUM (so do not
 * also call ff_vnet_csum_finish on the same packet: finishing twice corrupts the checksum).
 * Returns the segment count; -EINVAL for malformed/unsupported frames (ECN bit, IPv6, UFO,
 * gso_size 0, csum_start != IHL*4, fragments, headers beyond len, protocol mismatch, no
 * payload); -ENOSPC when more than max_segs segments or a segment larger than out_cap. */
int ff_gso_split(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                 uint8_t *const out[], size_t out_cap, uint16_t seg_lens[], int max_segs);

/* As ff_gso_split, but segment i is written at out + i * info.seg_len: the buffer is then
 * exactly the payload of one UDP_SEGMENT sendmsg with gso_size = seg_len (flannel's wire format
 * is one inner packet per datagram), or of several when nsegs exceeds UDP_MAX_SEGMENTS (cut at
 * multiples of seg_len). *out_len receives the total. Returns nsegs, -EINVAL, or -ENOSPC when
 * out_cap is too small. */
int ff_gso_split_contig(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                        uint8_t *out, size_t out_cap, size_t *out_len);

/* ------------------------------------------- UDP socket side: GSO / GRO (ff_gso.c) --- */

/* Opaque peer key for planning; any injective encoding works. ip/port in host order. */
static inline uint64_t ff_peer_key(uint32_t ip, uint16_t port)
{
    return (uint64_t)ip << 16 | port;
}

struct ff_gso_group {
    uint32_t start;     /* index of the first datagram */
    uint32_t count;     /* datagrams in the group (>= 1) */
    uint32_t bytes;     /* sum of their lengths */
    uint16_t gso_size;  /* UDP_SEGMENT value; 0 when count == 1 (send without the cmsg) */
};

/* Plan UDP_SEGMENT sends for n datagrams in send order (peer[i], len[i]). A group is a run of
 * consecutive datagrams to one peer in which every datagram but the last has exactly the first
 * one's length and the last is no longer; at most max_segs datagrams and max_bytes payload
 * bytes per group. Groups cover 0..n-1 in order. Returns the group count, -EINVAL for bad
 * arguments (n < 0, max_segs < 1), -ENOSPC if out_cap is too small (out_cap >= n always fits). */
int ff_udp_gso_plan(const uint64_t peer[], const uint32_t len[], int n, int max_segs,
                    uint32_t max_bytes, struct ff_gso_group out[], int out_cap);

/* Room for one UDP_SEGMENT control message (a u16). */
#define FF_UDP_GSO_CMSG_SPACE 24u   /* CMSG_SPACE(sizeof(uint16_t)) on LP64 */
/* Write a SOL_UDP/UDP_SEGMENT cmsg into buf (cap >= FF_UDP_GSO_CMSG_SPACE, 8-aligned); returns
 * the msg_controllen to use, or -ENOSPC. */
int ff_udp_gso_cmsg(void *buf, size_t cap, uint16_t gso_size);
/* gso_size from a SOL_UDP/UDP_GRO cmsg in a received msghdr's control buffer, 0 when absent
 * (one datagram), -EINVAL for a malformed control buffer. */
struct msghdr;
int ff_udp_gro_cmsg_size(const struct msghdr *msg);

/* Iterate the datagrams of a UDP_GRO receive: gso_size-byte pieces, the last may be shorter.
 * gso_size 0 means the buffer is one datagram. */
struct ff_gro_iter {
    const uint8_t *buf;
    size_t len, off;
    size_t step;
};
static inline void ff_udp_gro_iter_init(struct ff_gro_iter *it, const uint8_t *buf, size_t len,
                                        int gso_size)
{
    it->buf = buf;
    it->len = len;
    it->off = 0;
    it->step = gso_size > 0 ? (size_t)gso_size : (len ? len : 1);
}
/* Returns 1 and sets *dg and *dlen to the next datagram, or 0 when done. */
static inline int ff_udp_gro_next(struct ff_gro_iter *it, const uint8_t **dg, size_t *dlen)
{
    if (it->off >= it->len)
        return 0;
    size_t left = it->len - it->off;
    *dg = it->buf + it->off;
    *dlen = left < it->step ? left : it->step;
    it->off += *dlen;
    return 1;
}

/* -------------------------------------------- TUN write side: userspace GRO (ff_gro.c) --- */

#define FF_GRO_UDP 0x1u            /* also coalesce UDP (needs TUN USO, Linux >= 6.2); off by
                                    * default: vxlan/geneve-in-overlay bugs, PERF.md §1.4 */
#define FF_GRO_NO_TCP 0x2u         /* kill switch for TCP coalescing (PERF.md §7) */
#define FF_GRO_MAX_IOV 64          /* iovecs per output item: vnet hdr + head + <= 62 tails */

struct ff_gro;

/* Allocate a coalescer for batches of up to cap packets (the only allocation). NULL on ENOMEM
 * or cap outside 1..4096. */
struct ff_gro *ff_gro_new(int cap, unsigned flags);
void ff_gro_free(struct ff_gro *g);
/* Forget the current batch (call after the items were written). */
void ff_gro_reset(struct ff_gro *g);
/* Change the FF_GRO_* flags from the next packet on (runtime kill switches, PERF.md §7): e.g.
 * set FF_GRO_NO_TCP after a GSO write to the TUN fails with EINVAL. */
void ff_gro_set_flags(struct ff_gro *g, unsigned flags);

/* Offer one decapsulated IPv4 packet. The coalescer keeps pointers into pkt (no copy) and may
 * rewrite its IPv4/TCP/UDP header in place when it heads a merged item, so pkt must stay valid
 * and untouched until ff_gro_reset. A packet that cannot be merged (not a candidate, bad
 * checksum, different flow, gap...) becomes its own item and is written unchanged.
 * Returns 1 if merged into an earlier item, 0 if it started a new item, -ENOSPC when the batch
 * already holds cap packets or was finished (write the items, reset, then offer it again),
 * -EINVAL if len > 65535. */
int ff_gro_add(struct ff_gro *g, uint8_t *pkt, size_t len);

/* Finalize the batch: rewrite merged heads (IPv4 total length and checksum, TCP/UDP checksum =
 * pseudo-header sum, PSH) and their vnet hdrs. Returns the number of output items, in order of
 * their first packet (so per-flow order is kept). Call once per batch. */
int ff_gro_finish(struct ff_gro *g);

/* iovecs of output item i for writev(tun_fd): [vnet hdr (10 B), head packet, tail payloads...].
 * Returns the iovec count (<= FF_GRO_MAX_IOV), -ERANGE for a bad index, -ENOSPC if iov_cap is
 * too small. Valid until ff_gro_reset. */
int ff_gro_item_iov(const struct ff_gro *g, int i, struct iovec *iov, int iov_cap);
/* Copy output item i (vnet hdr + packet) into out; returns its length, -ERANGE, or -ENOSPC. */
int ff_gro_item_copy(const struct ff_gro *g, int i, uint8_t *out, size_t cap);
/* Number of input packets merged into item i (1 for a pass-through), or -ERANGE. */
int ff_gro_item_segs(const struct ff_gro *g, int i);

#endif
