/* TUN read side (virtio_net_hdr: partial checksums, TSO superframes) and UDP socket GSO/GRO
 * helpers. Follows wireguard-go tun/offload_linux.go (gsoNoneChecksum, gsoSplit) and the
 * kernel's tcp_gso_segment for the per-segment header rules. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/udp.h>
/* Older C library headers (glibc 2.17 of manylinux2014 images) lack these; the values are the
 * kernel ABI (linux/udp.h: UDP_SEGMENT since Linux 4.18, UDP_GRO since 5.0). */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#include "ff_offload.h"

#define FF_GSO_MAX_FRAME (1u << 18)  /* sanity cap; TUN superframes are <= 64 KiB (no BIG TCP) */

/* A partial checksum the kernel may hand us for a whole packet: over the L4 header of an
 * unfragmented IPv4 TCP or UDP packet, at that protocol's checksum field (the only ones the
 * TUN is offered, TUN_F_CSUM). csum_start/csum_offset anywhere else would have us write into
 * the IP header or the payload: 0 when they are right, -EINVAL otherwise. */
static int vnet_csum_ok(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len)
{
    size_t ihl, need;

    if (len < FF_IP4_HDR_MIN || ff_ip4_version(pkt) != 4)
        return -EINVAL;
    ihl = ff_ip4_hdr_len(pkt);
    if (ihl < FF_IP4_HDR_MIN || h->csum_start != ihl || (ff_ip4_frag(pkt) & FF_IP4_FRAGMENT))
        return -EINVAL;
    if (pkt[FF_IP4_PROTO] == FF_IPPROTO_TCP && h->csum_offset == FF_TCP_CSUM)
        need = FF_TCP_HDR_MIN;
    else if (pkt[FF_IP4_PROTO] == FF_IPPROTO_UDP && h->csum_offset == FF_UDP_CSUM)
        need = FF_UDP_HDR_LEN;
    else
        return -EINVAL;
    return ihl + need <= len ? 0 : -EINVAL;
}

int ff_vnet_csum_finish(const struct virtio_net_hdr *h, uint8_t *pkt, size_t len)
{
    if (h->gso_type != VIRTIO_NET_HDR_GSO_NONE)
        return -EINVAL;
    if (!(h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM))
        return 0;
    size_t start = h->csum_start, at = (size_t)h->csum_start + h->csum_offset;
    if (vnet_csum_ok(h, pkt, len) < 0)
        return -EINVAL;
    /* The field holds the pseudo-header sum; summing the whole L4 range includes it. */
    uint16_t c = (uint16_t)~ff_ck_fold(ff_ck_add(0, pkt + start, len - start));
    ff_st16(pkt + at, c ? c : 0xffff);
    return 0;
}

/* A parsed, validated TSO superframe. */
struct sf {
    size_t iphl, hdrl, paylen;
    unsigned gso, nsegs;
};

static int parse_sf(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len, struct sf *s)
{
    if (h->gso_type != VIRTIO_NET_HDR_GSO_TCPV4)
        return -EINVAL;   /* ECN bit, UFO, USO, TCPV6, unknown */
    if (h->gso_size == 0 || len < FF_IP4_HDR_MIN || len > FF_GSO_MAX_FRAME)
        return -EINVAL;
    if (ff_ip4_version(pkt) != 4)
        return -EINVAL;
    size_t iphl = ff_ip4_hdr_len(pkt);
    if (iphl < FF_IP4_HDR_MIN || iphl + FF_TCP_HDR_MIN > len || h->csum_start != iphl)
        return -EINVAL;
    if (pkt[FF_IP4_PROTO] != FF_IPPROTO_TCP || (ff_ip4_frag(pkt) & FF_IP4_FRAGMENT))
        return -EINVAL;
    if ((h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && h->csum_offset != FF_TCP_CSUM)
        return -EINVAL;
    size_t l4hl = ff_tcp_hdr_len(pkt + iphl);
    if (l4hl < FF_TCP_HDR_MIN || iphl + l4hl >= len)
        return -EINVAL;   /* a superframe without payload is inconsistent */
    s->iphl = iphl;
    s->hdrl = iphl + l4hl;
    s->paylen = len - s->hdrl;
    s->gso = h->gso_size;
    s->nsegs = (unsigned)((s->paylen + s->gso - 1) / s->gso);
    if (s->hdrl + (s->paylen < s->gso ? s->paylen : s->gso) > FF_IP4_MAX_LEN)
        return -EINVAL;   /* a segment would not fit an IPv4 total length */
    return 0;
}

int ff_gso_count(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len)
{
    if (h->gso_type == VIRTIO_NET_HDR_GSO_NONE) {
        if ((h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && vnet_csum_ok(h, pkt, len) < 0)
            return -EINVAL;
        return len > FF_IP4_MAX_LEN ? -EINVAL : 1;
    }
    struct sf s;
    int rc = parse_sf(h, pkt, len, &s);
    return rc < 0 ? rc : (int)s.nsegs;
}

/* Write segment i (payload pay[0..n)) of superframe s into o. */
static void build_seg(const struct sf *s, const uint8_t *pkt, unsigned i, size_t n, int last,
                      uint8_t *o)
{
    memcpy(o, pkt, s->hdrl);
    memcpy(o + s->hdrl, pkt + s->hdrl + (size_t)i * s->gso, n);
    uint16_t l4len = (uint16_t)(s->hdrl - s->iphl + n);
    ff_st16(o + FF_IP4_TOT_LEN, (uint16_t)(s->iphl + l4len));
    ff_st16(o + FF_IP4_ID, (uint16_t)(ff_ld16(pkt + FF_IP4_ID) + i));
    ff_ip4_set_csum(o);

    uint8_t *tcp = o + s->iphl;
    ff_st32(tcp + FF_TCP_SEQ, ff_ld32(pkt + s->iphl + FF_TCP_SEQ) + (uint32_t)(i * s->gso));
    if (!last)
        tcp[FF_TCP_FLAGS] &= (uint8_t)~(FF_TCP_F_FIN | FF_TCP_F_PSH);
    if (i)
        tcp[FF_TCP_FLAGS] &= (uint8_t)~FF_TCP_F_CWR;
    ff_st16(tcp + FF_TCP_CSUM, 0);
    uint64_t acc = ff_ck_pseudo4(o, FF_IPPROTO_TCP, l4len);
    ff_st16(tcp + FF_TCP_CSUM, (uint16_t)~ff_ck_fold(ff_ck_add(acc, tcp, l4len)));
}

int ff_gso_split(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                 uint8_t *const out[], size_t out_cap, uint16_t seg_lens[], int max_segs)
{
    int n = ff_gso_count(h, pkt, len);

    if (n < 0)
        return n;
    if (n > max_segs)
        return -ENOSPC;
    return ff_gso_split_range(h, pkt, len, 0, out, out_cap, seg_lens, max_segs);
}

int ff_gso_split_range(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                       unsigned first, uint8_t *const out[], size_t out_cap, uint16_t seg_lens[],
                       int max_segs)
{
    if (max_segs < 1)
        return -ENOSPC;
    if (h->gso_type == VIRTIO_NET_HDR_GSO_NONE) {
        int rc = ff_gso_count(h, pkt, len);
        if (rc < 0)
            return rc;
        if (first != 0)
            return -ERANGE;
        if (len > out_cap)
            return -ENOSPC;
        memcpy(out[0], pkt, len);
        seg_lens[0] = (uint16_t)len;
        return ff_vnet_csum_finish(h, out[0], len) < 0 ? -EINVAL : 1;
    }
    struct sf s;
    int rc = parse_sf(h, pkt, len, &s);
    if (rc < 0)
        return rc;
    if (first >= s.nsegs)
        return -ERANGE;
    if (s.hdrl + (s.paylen < s.gso ? s.paylen : s.gso) > out_cap)
        return -ENOSPC;
    unsigned end = s.nsegs - first > (unsigned)max_segs ? first + (unsigned)max_segs : s.nsegs;
    for (unsigned i = first; i < end; i++) {
        size_t off = (size_t)i * s.gso;
        size_t n = s.paylen - off < s.gso ? s.paylen - off : s.gso;
        build_seg(&s, pkt, i, n, i + 1 == s.nsegs, out[i - first]);
        seg_lens[i - first] = (uint16_t)(s.hdrl + n);
    }
    return (int)(end - first);
}

int ff_udp_gso_plan(const uint64_t peer[], const uint32_t len[], int n, int max_segs,
                    uint32_t max_bytes, struct ff_gso_group out[], int out_cap)
{
    if (n < 0 || max_segs < 1)
        return -EINVAL;
    int ng = 0;
    for (int i = 0; i < n;) {
        if (ng >= out_cap)
            return -ENOSPC;
        uint32_t gso = len[i];
        uint64_t bytes = gso;
        int j = i + 1;
        /* gso_size is a u16 and cannot be 0; a datagram alone needs no cmsg. */
        while (gso && gso <= UINT16_MAX && j < n && j - i < max_segs && peer[j] == peer[i] &&
               len[j] <= gso && bytes + len[j] <= max_bytes) {
            bytes += len[j];
            if (len[j++] < gso)
                break;   /* a shorter datagram ends the run */
        }
        out[ng].start = (uint32_t)i;
        out[ng].count = (uint32_t)(j - i);
        out[ng].bytes = (uint32_t)bytes;
        out[ng].gso_size = j - i > 1 ? (uint16_t)gso : 0;
        ng++;
        i = j;
    }
    return ng;
}

int ff_udp_gso_cmsg(void *buf, size_t cap, uint16_t gso_size)
{
    if (cap < CMSG_SPACE(sizeof(uint16_t)))
        return -ENOSPC;
    memset(buf, 0, CMSG_SPACE(sizeof(uint16_t)));
    struct cmsghdr *c = buf;
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(c), &gso_size, sizeof gso_size);
    return (int)CMSG_SPACE(sizeof(uint16_t));
}

int ff_udp_gro_cmsg_size(const struct msghdr *msg)
{
    if (!msg->msg_control || msg->msg_controllen < sizeof(struct cmsghdr))
        return 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR((struct msghdr *)msg, c)) {
        if (c->cmsg_level != SOL_UDP || c->cmsg_type != UDP_GRO)
            continue;
        const uint8_t *end = (const uint8_t *)msg->msg_control + msg->msg_controllen;
        if (c->cmsg_len < CMSG_LEN(sizeof(int)) || CMSG_DATA(c) + sizeof(int) > end)
            return -EINVAL;
        int v;
        memcpy(&v, CMSG_DATA(c), sizeof v);
        return v > 0 && v <= UINT16_MAX ? v : -EINVAL;
    }
    return 0;
}
