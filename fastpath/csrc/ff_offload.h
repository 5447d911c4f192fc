/* Offload tier building blocks (docs/fastpath.md §"Offload tier"): pure packet transforms, no I/O.
 *
 *   ff_gso.c   virtio_net_hdr handling of TUN reads: finish CHECKSUM_PARTIAL, split TSO
 *              superframes; UDP_SEGMENT send planning; UDP_GRO receive splitting
 *   ff_gro.c   userspace TCP GRO of decapsulated IPv4 packets before the TUN write, zero-copy
 *              (the output is iovecs over the caller's buffers)
 *   ff_csum.c  the checksums both use (ff_csum.h)
 *
 * Every function returns a count, 0, or -errno; none allocates except ff_gro_new, none prints.
 * All lengths coming from packets or the kernel are checked before use. Inner packets are IPv4
 * TCP superframes only (flannel's udp backend is IPv4, and the TUN is offered TSO4 alone, not
 * USO): every other GSO type is rejected. */
#ifndef FF_OFFLOAD_H
#define FF_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ff_csum.h"
#include "ff_wire.h"

#define FF_UDP_GSO_MAX_BYTES 65000u    /* per-sendmsg payload cap used by Nebula/wireguard-go */
#define FF_UDP_GSO_MAX_SEGS 64         /* UDP_MAX_SEGMENTS before Linux 6.9 (128 from 6.9) */

/* -------------------------------------------------- TUN read side: vnet hdr (ff_gso.c) --- */

/* For a GSO_NONE read with VIRTIO_NET_HDR_F_NEEDS_CSUM: finish the partial L4 checksum in place
 * (the field already holds the pseudo-header sum; the kernel's skb_checksum_help semantics, a
 * result of 0 is written as 0xffff). No-op (0) without NEEDS_CSUM. -EINVAL when gso_type is
 * not NONE, or csum_start / csum_offset are not those of an unfragmented IPv4 TCP or UDP
 * packet (csum_start = IHL*4, csum_offset 16 or 6, the L4 header inside pkt[0..len)). */
int ff_vnet_csum_finish(const struct virtio_net_hdr *h, uint8_t *pkt, size_t len);

/* Number of segments ff_gso_split would produce for this superframe (1 for GSO_NONE), or
 * -EINVAL for a frame it would reject. Lets the loop make room before splitting. */
int ff_gso_count(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len);

/* Split a TSO (GSO_TCPV4) superframe of len bytes (the bytes after the vnet hdr) into segments
 * of h->gso_size payload bytes, segment i written to out[i] (capacity out_cap each) with its
 * length in seg_lens[i]; out[] may point straight into sendmmsg buffers. Per segment: IP total
 * length, ID (+i) and header checksum; TCP seq (+i*gso_size), FIN/PSH only on the last, CWR
 * only on the first; full TCP checksum. hdr_len from the kernel is ignored (it may cover the
 * whole first packet on FORWARD paths); the header length is IHL*4 + doff*4.
 * GSO_NONE is handled too: one segment (a copy), L4 checksum finished if NEEDS_CSUM (so do not
 * also call ff_vnet_csum_finish on the same packet: finishing twice corrupts the checksum).
 * Returns the segment count; -EINVAL for malformed/unsupported frames (ECN bit, IPv6, UFO,
 * USO, gso_size 0, csum_start != IHL*4, fragments, headers beyond len, not TCP, no payload);
 * -ENOSPC when more than max_segs segments or a segment larger than out_cap. */
int ff_gso_split(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                 uint8_t *const out[], size_t out_cap, uint16_t seg_lens[], int max_segs);
/* The same split in chunks, for superframes of more segments than the caller has room for (a
 * 64 KiB frame at a small MSS: 131 segments at gso_size 500, over 1300 at 48): segments
 * first..first+max_segs-1 (fewer at the end) into out[0..], numbered as in the whole split (seq,
 * IP ID, FIN/PSH on the frame's last segment only). Returns the segments written; -ERANGE when
 * first is past the last segment; otherwise as ff_gso_split. */
int ff_gso_split_range(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                       unsigned first, uint8_t *const out[], size_t out_cap, uint16_t seg_lens[],
                       int max_segs);

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

#define FF_GRO_NO_TCP 0x1u         /* kill switch for TCP coalescing (docs/fastpath.md
                                    * §"Kill switches and fallbacks"); UDP is never coalesced */
#define FF_GRO_MAX_IOV 64          /* iovecs per output item: vnet hdr + head + <= 62 tails */

struct ff_gro;

/* Allocate a coalescer for batches of up to cap packets (the only allocation). NULL on ENOMEM
 * or cap outside 1..4096. Its flow hash gets a random key (getrandom): a sender cannot pick
 * 4-tuples that share a slot, and the probes per lookup are bounded anyway. */
struct ff_gro *ff_gro_new(int cap, unsigned flags);
/* Tests and fuzzing: set the hash key (reproducible runs), and the home slot a flow hashes to
 * under it (to build colliding flows on purpose). */
#define FF_GRO_KEYED 1
void ff_gro_set_key(struct ff_gro *g, const uint64_t key[4]);
uint32_t ff_gro_flow_slot(const struct ff_gro *g, uint32_t src, uint32_t dst, uint32_t ports,
                          uint8_t proto);
void ff_gro_free(struct ff_gro *g);
/* Forget the current batch (call after the items were written). */
void ff_gro_reset(struct ff_gro *g);
/* Change the FF_GRO_* flags from the next packet on (a runtime kill switch): e.g. set
 * FF_GRO_NO_TCP after a GSO write to the TUN fails with EINVAL. */
void ff_gro_set_flags(struct ff_gro *g, unsigned flags);

/* What ff_gro_add did with a packet (errors are -errno). */
enum ff_gro_add { FF_GRO_NEW_ITEM = 0, FF_GRO_MERGED = 1 };
/* Offer one decapsulated IPv4 packet. The coalescer keeps pointers into pkt (no copy) and may
 * rewrite its IPv4/TCP header in place when it heads a merged item, so pkt must stay valid and
 * untouched until ff_gro_reset. A packet that cannot be merged (not a candidate, bad checksum,
 * different flow, gap...) becomes its own item and is written unchanged.
 * Returns FF_GRO_MERGED (appended to an earlier item) or FF_GRO_NEW_ITEM; -ENOSPC when the
 * batch already holds cap packets or was finished (write the items, reset, then offer it
 * again), -EINVAL if len > 65535. */
int ff_gro_add(struct ff_gro *g, uint8_t *pkt, size_t len);

/* Finalize the batch: rewrite merged heads (IPv4 total length and checksum, TCP checksum =
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
