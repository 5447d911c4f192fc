/* TUN read side (virtio_net_hdr: partial checksums, TSO/USO superframes) and UDP socket
 * GSO/GRO helpers. Follows wireguard-go tun/offload_linux.go (gsoNoneChecksum, gsoSplit) and
 * the kernel's tcp_gso_segment / __udp_gso_segment for the per-segment header rules. */
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

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80
#define IP_MF_OFF 0x3fff   /* MF flag + fragment offset */
#define FF_GSO_MAX_FRAME (1u << 18)  /* sanity cap; TUN superframes are <= 64 KiB (no BIG TCP) */

static inline uint16_t ld16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t ld32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void st16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void st32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

int ff_vnet_csum_finish(const struct virtio_net_hdr *h, uint8_t *pkt, size_t len)
{
    if (h->gso_type != VIRTIO_NET_HDR_GSO_NONE)
        return -EINVAL;
    if (!(h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM))
        return 0;
    size_t start = h->csum_start, at = (size_t)h->csum_start + h->csum_offset;
    if (start >= len || at + 2 > len)
        return -EINVAL;
    /* The field holds the pseudo-header sum; summing the whole L4 range includes it. */
    uint16_t c = (uint16_t)~ff_ck_fold(ff_ck_add(0, pkt + start, len - start));
    st16(pkt + at, c ? c : 0xffff);
    return 0;
}

/* A parsed, validated superframe. */
struct sf {
    size_t iphl, hdrl, paylen;
    unsigned gso, nsegs;
    int tcp;
};

static int parse_sf(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len, struct sf *s)
{
    int tcp;
    if (h->gso_type == VIRTIO_NET_HDR_GSO_TCPV4)
        tcp = 1;
    else if (h->gso_type == VIRTIO_NET_HDR_GSO_UDP_L4)
        tcp = 0;
    else
        return -EINVAL;   /* ECN bit, UFO, TCPV6, unknown */
    if (h->gso_size == 0 || len < 20 || len > FF_GSO_MAX_FRAME)
        return -EINVAL;
    if ((pkt[0] >> 4) != 4)
        return -EINVAL;   /* USO over IPv6 shares the gso_type; not supported */
    size_t iphl = (size_t)(pkt[0] & 0x0f) * 4;
    if (iphl < 20 || iphl + (tcp ? 20 : 8) > len || h->csum_start != iphl)
        return -EINVAL;
    if (pkt[9] != (tcp ? IPPROTO_TCP_ : IPPROTO_UDP_) || (ld16(pkt + 6) & IP_MF_OFF))
        return -EINVAL;
    if ((h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) && h->csum_offset != (tcp ? 16 : 6))
        return -EINVAL;
    size_t l4hl = tcp ? (size_t)(pkt[iphl + 12] >> 4) * 4 : 8;
    if (l4hl < (tcp ? 20u : 8u) || iphl + l4hl >= len)
        return -EINVAL;   /* a superframe without payload is inconsistent */
    s->tcp = tcp;
    s->iphl = iphl;
    s->hdrl = iphl + l4hl;
    s->paylen = len - s->hdrl;
    s->gso = h->gso_size;
    s->nsegs = (unsigned)((s->paylen + s->gso - 1) / s->gso);
    if (s->hdrl + (s->paylen < s->gso ? s->paylen : s->gso) > 0xffff)
        return -EINVAL;   /* a segment would not fit an IPv4 total length */
    return 0;
}

int ff_gso_parse(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                 struct ff_gso_info *info)
{
    if (h->gso_type == VIRTIO_NET_HDR_GSO_NONE) {
        if ((h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) &&
            ((size_t)h->csum_start >= len || (size_t)h->csum_start + h->csum_offset + 2 > len))
            return -EINVAL;
        if (len > 0xffff)
            return -EINVAL;
        *info = (struct ff_gso_info){ 1, 0, (uint16_t)len, (uint16_t)len };
        return 0;
    }
    struct sf s;
    int rc = parse_sf(h, pkt, len, &s);
    if (rc < 0)
        return rc;
    size_t first = s.hdrl + (s.paylen < s.gso ? s.paylen : s.gso);
    size_t last = s.hdrl + (s.paylen - (size_t)(s.nsegs - 1) * s.gso);
    *info = (struct ff_gso_info){ (int)s.nsegs, (uint16_t)s.hdrl, (uint16_t)first, (uint16_t)last };
    return 0;
}

int ff_gso_count(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len)
{
    struct ff_gso_info info;
    int rc = ff_gso_parse(h, pkt, len, &info);
    return rc < 0 ? rc : info.nsegs;
}

/* Write segment i (payload pay[0..n)) of superframe s into o. */
static void build_seg(const struct sf *s, const uint8_t *pkt, unsigned i, size_t n, int last,
                      uint8_t *o)
{
    memcpy(o, pkt, s->hdrl);
    memcpy(o + s->hdrl, pkt + s->hdrl + (size_t)i * s->gso, n);
    uint16_t l4len = (uint16_t)(s->hdrl - s->iphl + n);
    st16(o + 2, (uint16_t)(s->iphl + l4len));
    st16(o + 4, (uint16_t)(ld16(pkt + 4) + i));
    ff_ipv4_set_csum(o);

    uint8_t *l4 = o + s->iphl;
    size_t at;
    if (s->tcp) {
        st32(l4 + 4, ld32be(pkt + s->iphl + 4) + (uint32_t)(i * s->gso));
        if (!last)
            l4[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (i)
            l4[13] &= (uint8_t)~TCP_CWR;
        at = 16;
    } else {
        st16(l4 + 4, l4len);
        at = 6;
    }
    l4[at] = l4[at + 1] = 0;
    uint64_t acc = ff_ck_pseudo4(o, s->tcp ? IPPROTO_TCP_ : IPPROTO_UDP_, l4len);
    uint16_t c = (uint16_t)~ff_ck_fold(ff_ck_add(acc, l4, l4len));
    if (!s->tcp && c == 0)
        c = 0xffff;   /* RFC 768: 0 means "no checksum" */
    st16(l4 + at, c);
}

int ff_gso_split(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                 uint8_t *const out[], size_t out_cap, uint16_t seg_lens[], int max_segs)
{
    if (max_segs < 1)
        return -ENOSPC;
    if (h->gso_type == VIRTIO_NET_HDR_GSO_NONE) {
        int rc = ff_gso_count(h, pkt, len);
        if (rc < 0)
            return rc;
        if (len > out_cap || len > 0xffff)
            return -ENOSPC;
        memcpy(out[0], pkt, len);
        seg_lens[0] = (uint16_t)len;
        return ff_vnet_csum_finish(h, out[0], len) < 0 ? -EINVAL : 1;
    }
    struct sf s;
    int rc = parse_sf(h, pkt, len, &s);
    if (rc < 0)
        return rc;
    if (s.nsegs > (unsigned)max_segs)
        return -ENOSPC;
    if (s.hdrl + (s.paylen < s.gso ? s.paylen : s.gso) > out_cap)
        return -ENOSPC;
    for (unsigned i = 0; i < s.nsegs; i++) {
        size_t off = (size_t)i * s.gso;
        size_t n = s.paylen - off < s.gso ? s.paylen - off : s.gso;
        build_seg(&s, pkt, i, n, i + 1 == s.nsegs, out[i]);
        seg_lens[i] = (uint16_t)(s.hdrl + n);
    }
    return (int)s.nsegs;
}

int ff_gso_split_contig(const struct virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                        uint8_t *out, size_t out_cap, size_t *out_len)
{
    if (h->gso_type == VIRTIO_NET_HDR_GSO_NONE) {
        uint16_t l;
        int rc = ff_gso_split(h, pkt, len, &out, out_cap, &l, 1);
        if (rc > 0)
            *out_len = l;
        return rc;
    }
    struct sf s;
    int rc = parse_sf(h, pkt, len, &s);
    if (rc < 0)
        return rc;
    if (len + (size_t)(s.nsegs - 1) * s.hdrl > out_cap)
        return -ENOSPC;
    size_t seg = s.hdrl + s.gso;
    for (unsigned i = 0; i < s.nsegs; i++) {
        size_t n = s.paylen - (size_t)i * s.gso < s.gso ? s.paylen - (size_t)i * s.gso : s.gso;
        build_seg(&s, pkt, i, n, i + 1 == s.nsegs, out + (size_t)i * seg);
    }
    *out_len = len + (size_t)(s.nsegs - 1) * s.hdrl;
    return (int)s.nsegs;
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
        while (gso && gso <= 0xffff && j < n && j - i < max_segs && peer[j] == peer[i] && len[j] <= gso &&
               bytes + len[j] <= max_bytes) {
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
        return v > 0 && v <= 0xffff ? v : -EINVAL;
    }
    return 0;
}
