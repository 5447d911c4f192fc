/* The tun->udp loop of the offload tier (FF_F_OFFLOAD).
 *
 * The TUN has IFF_VNET_HDR and TSO4: one read returns a virtio_net_hdr and either one packet or
 * a TCP superframe of up to 64 KiB. ff_gso_split (ff_gso.c) cuts it into MSS-sized packets with
 * finished checksums, each then takes the same per-packet path as tier 1 (validate, look up,
 * TTL-1, ICMP when there is no route). Runs of equal-sized segments to one peer are sent as one
 * UDP_SEGMENT datagram train (ff_udp_gso_plan): the kernel cuts it back into one datagram per
 * inner packet, so the wire format is flannel's.
 *
 * The udp->tun side coalesces consecutive TCP segments of a flow (ff_gro.c) and writes each
 * merged item as one GSO_TCPV4 frame, so the kernel's TCP stack sees 64 KiB at a time. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <string.h>
#include <unistd.h>

#include "ff_fwd_int.h"

void ff_gso_batch_free(struct ff_gso_batch *g)
{
    free(g->frame);
    free(g->segp);
    free(g->seg_lens);
    free(g->peer);
    free(g->len);
    free(g->iov);
    free(g->groups);
    free(g->msgs);
    free(g->addrs);
    free(g->cmsg);
    memset(g, 0, sizeof(*g));
}

int ff_gso_batch_alloc(struct ff_gso_batch *g)
{
    size_t n = FF_GSO_BATCH_SEGS;

    g->frame = malloc(FF_VNET_HDR_LEN + FF_BUF_BYTES);
    g->segp = calloc(n, sizeof(*g->segp));
    g->seg_lens = calloc(n, sizeof(*g->seg_lens));
    g->peer = calloc(n, sizeof(*g->peer));
    g->len = calloc(n, sizeof(*g->len));
    g->iov = calloc(n, sizeof(*g->iov));
    g->groups = calloc(n, sizeof(*g->groups));
    g->msgs = calloc(n, sizeof(*g->msgs));
    g->addrs = calloc(n, sizeof(*g->addrs));
    g->cmsg = aligned_alloc(8, n * FF_UDP_GSO_CMSG_SPACE);
    if (!g->frame || !g->segp || !g->seg_lens || !g->peer || !g->len || !g->iov || !g->groups ||
        !g->msgs || !g->addrs || !g->cmsg) {
        ff_gso_batch_free(g);
        return -ENOMEM;
    }
    return 0;
}

/* Read one TUN frame and split it into slot `slot` of the batch, segments from index `first`.
 * A plain TUN (TUN_TSO off, UDP_GSO on) gives single packets: they get an all-zero header
 * (GSO_NONE, checksums complete) and take the same path.
 * Returns the segment count, 0 when the TUN is drained, -1 after a dropped frame. */
static int read_frame(struct ff_worker *w, uint32_t slot, uint32_t first)
{
    struct ff_gso_batch *g = &w->g;
    struct virtio_net_hdr h;
    uint8_t *pkt = g->frame + FF_VNET_HDR_LEN, *base = pkt_buf(&w->b, slot);
    ssize_t r;
    size_t len, each;
    int k;

    size_t skip = w->fw->vnet ? 0 : FF_VNET_HDR_LEN;

    do
        r = read(w->tun_fd, g->frame + skip, FF_VNET_HDR_LEN + FF_BUF_BYTES - skip);
    while (r < 0 && errno == EINTR);
    if (r >= 0 && skip) {
        memset(g->frame, 0, FF_VNET_HDR_LEN);
        r += (ssize_t)skip;
    }
    if (r < 0) {
        if (errno != EAGAIN)
            STAT_ADD(w, FF_ST_TUN_ERROR, 1);
        return 0;
    }
    if (r <= (ssize_t)FF_VNET_HDR_LEN)
        goto bad;
    memcpy(&h, g->frame, sizeof(h));
    len = (size_t)r - FF_VNET_HDR_LEN;
    k = ff_gso_count(&h, pkt, len);
    if (k <= 0 || k > FF_GSO_MAX_SEGS)
        goto bad;
    /* segment i at base + i*each: gso_size payload plus at most 120 header bytes each */
    each = h.gso_type == VIRTIO_NET_HDR_GSO_NONE ? w->b.slot : (size_t)h.gso_size + FF_GSO_SEG_HDR_MAX;
    for (int i = 0; i < k; i++)
        g->segp[first + (uint32_t)i] = base + (size_t)i * each;
    k = ff_gso_split(&h, pkt, len, &g->segp[first], each, &g->seg_lens[first], FF_GSO_MAX_SEGS);
    if (k <= 0)
        goto bad;
    if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE)
        STAT_ADD(w, FF_ST_TUN_GSO_FRAMES, 1);
    return k;
bad:
    STAT_ADD(w, FF_ST_TUN_INVALID, 1);   /* malformed/unsupported frame, or IPv6 */
    return -1;
}

static int plan_groups(struct ff_worker *w, uint32_t m)
{
    struct ff_gso_batch *g = &w->g;
    int off = __atomic_load_n(&g->gso_off, __ATOMIC_RELAXED);
    int n = ff_udp_gso_plan(g->peer, g->len, (int)m, off ? 1 : FF_UDP_GSO_SEGS,
                            FF_UDP_GSO_MAX_BYTES, g->groups, FF_GSO_BATCH_SEGS);

    for (int j = 0; j < n; j++) {
        struct ff_gso_group *gr = &g->groups[j];
        struct msghdr *mh = &g->msgs[j].msg_hdr;
        uint64_t key = g->peer[gr->start];
        uint8_t *cm = g->cmsg + (size_t)j * FF_UDP_GSO_CMSG_SPACE;
        g->addrs[j].sin_family = AF_INET;
        g->addrs[j].sin_addr.s_addr = htonl((uint32_t)(key >> 16));
        g->addrs[j].sin_port = htons((uint16_t)key);
        mh->msg_name = &g->addrs[j];
        mh->msg_namelen = sizeof(g->addrs[j]);
        mh->msg_iov = &g->iov[gr->start];
        mh->msg_iovlen = gr->count;
        mh->msg_control = NULL;
        mh->msg_controllen = 0;
        if (gr->gso_size) {
            int cl = ff_udp_gso_cmsg(cm, FF_UDP_GSO_CMSG_SPACE, gr->gso_size);
            if (cl <= 0) {
                /* never send a train without its UDP_SEGMENT cmsg: it would leave as one
                 * datagram holding several packets. Plan again, one packet per datagram. */
                __atomic_store_n(&g->gso_off, 1, __ATOMIC_RELAXED);
                STAT_ADD(w, FF_ST_OFFLOAD_FALLBACKS, 1);
                return plan_groups(w, m);
            }
            mh->msg_control = cm;
            mh->msg_controllen = (size_t)cl;
        }
    }
    return n;
}

uint32_t ff_tun_to_udp_batch_gso(struct ff_worker *w)
{
    struct ff_gso_batch *g = &w->g;
    struct ff_memo memo = {0};
    uint32_t frames = 0, nseg = 0, m = 0;
    uint64_t bytes = 0;
    int k, groups;

    while (frames < w->fw->batch && nseg + FF_GSO_MAX_SEGS <= FF_GSO_BATCH_SEGS) {
        k = read_frame(w, frames, nseg);
        if (k == 0)
            break;
        frames++;           /* a dropped frame still counts: the drain goes on */
        if (k > 0)
            nseg += (uint32_t)k;
    }
    if (!frames)
        return 0;
    for (uint32_t i = 0; i < nseg; i++)
        bytes += g->seg_lens[i];
    STAT_ADD(w, FF_ST_TUN_RX_PACKETS, nseg);
    STAT_ADD(w, FF_ST_TUN_RX_BYTES, bytes);

    memo.t = read_lock(w);
    for (uint32_t i = 0; i < nseg; i++) {
        const struct ff_slot *peer = ff_route_packet(w, &memo, g->segp[i], g->seg_lens[i]);
        if (!peer)
            continue;
        g->peer[m] = ff_peer_key(peer->peer_ip, peer->peer_port);
        g->len[m] = ff_ipv4_totlen(g->segp[i]);
        g->iov[m].iov_base = g->segp[i];
        g->iov[m].iov_len = g->len[m];
        m++;
    }
    read_unlock(w);
    groups = plan_groups(w, m);
    if (groups > 0)
        ff_send_msgs(w, g->msgs, (uint32_t)groups, g->groups);
    return frames;
}

/* TCP_GRO fallback scratch: one linearized item (vnet hdr + <= 64 KiB) and its segments. */
#define FF_RESEG_BYTES (FF_VNET_HDR_LEN + FF_BUF_BYTES + FF_GSO_SLOT_BYTES)

int ff_gro_rx_alloc(struct ff_worker *w)
{
    int tcp = (w->fw->feat & FF_F_TCP_GRO) != 0;

    /* without TCP_GRO (or a vnet header to carry merged items) nothing is merged */
    w->gro = ff_gro_new(FF_GRO_RX_MAX, tcp ? 0 : FF_GRO_NO_TCP);
    w->rx_p = calloc(FF_GRO_RX_MAX, sizeof(*w->rx_p));
    w->rx_len = calloc(FF_GRO_RX_MAX, sizeof(*w->rx_len));
    w->rx_cmsg = aligned_alloc(8, FF_GRO_RX_MSGS * FF_GRO_CMSG_BYTES);
    w->reseg = tcp ? malloc(FF_RESEG_BYTES) : NULL;
    if (!w->gro || !w->rx_p || !w->rx_len || !w->rx_cmsg || (tcp && !w->reseg)) {
        ff_gro_rx_free(w);
        return -ENOMEM;
    }
    return 0;
}

void ff_gro_rx_free(struct ff_worker *w)
{
    ff_gro_free(w->gro);
    free(w->rx_p);
    free(w->rx_len);
    free(w->rx_cmsg);
    free(w->reseg);
    w->reseg = NULL;
    w->gro = NULL;
    w->rx_p = NULL;
    w->rx_len = NULL;
    w->rx_cmsg = NULL;
}

/* A merged item the kernel refused (EINVAL: e.g. the virtio_net_hdr regression of PERF.md
 * 1.4): its head was rewritten in place, so cut the item again, as the kernel would have, into
 * complete segments (ff_gso_split) and write those. Returns the segments written and adds
 * their bytes to *bytes. */
static int write_segments(struct ff_worker *w, int item, uint64_t *bytes)
{
    uint8_t *frame = w->reseg, *seg = w->reseg + FF_VNET_HDR_LEN + FF_BUF_BYTES;
    uint8_t *segp[FF_GSO_MAX_SEGS];
    uint16_t seg_lens[FF_GSO_MAX_SEGS];
    struct virtio_net_hdr h;
    int len = ff_gro_item_copy(w->gro, item, frame, FF_VNET_HDR_LEN + FF_BUF_BYTES), k, ok = 0;
    size_t each;

    if (len <= (int)FF_VNET_HDR_LEN)
        return 0;
    memcpy(&h, frame, sizeof(h));
    each = (size_t)h.gso_size + FF_GSO_SEG_HDR_MAX;
    k = ff_gso_count(&h, frame + FF_VNET_HDR_LEN, (size_t)len - FF_VNET_HDR_LEN);
    if (k <= 0 || k > FF_GSO_MAX_SEGS || (size_t)k * each > FF_GSO_SLOT_BYTES)
        return 0;
    for (int i = 0; i < k; i++)
        segp[i] = seg + (size_t)i * each;
    k = ff_gso_split(&h, frame + FF_VNET_HDR_LEN, (size_t)len - FF_VNET_HDR_LEN, segp, each,
                     seg_lens, FF_GSO_MAX_SEGS);
    for (int i = 0; i < k; i++) {
        if (ff_tun_write(w, segp[i], seg_lens[i], FF_TUN_WRITE_RETRIES) == 0) {
            ok++;
            *bytes += seg_lens[i];
        }
    }
    return ok;
}

/* Turn TCP GRO off for this worker from the next batch on (a refused GSO TUN write). */
static void tcp_gro_off(struct ff_worker *w)
{
    if (__atomic_load_n(&w->tcp_gro_off, __ATOMIC_RELAXED))
        return;
    ff_gro_set_flags(w->gro, FF_GRO_NO_TCP);
    __atomic_store_n(&w->tcp_gro_off, 1, __ATOMIC_RELAXED);
    STAT_ADD(w, FF_ST_OFFLOAD_FALLBACKS, 1);
}

/* Coalesce the k accepted packets and write each item as one TUN frame (without its vnet
 * header on a plain TUN, where nothing is ever merged). */
static void gro_write(struct ff_worker *w, uint32_t k)
{
    struct iovec iov[FF_GRO_MAX_IOV];
    uint64_t tx = 0, tx_bytes = 0, merged = 0;
    int items, skip = w->fw->vnet ? 0 : 1;

    for (uint32_t i = 0; i < k; i++)    /* k <= FF_GRO_RX_MAX = capacity: ff_gro_add cannot refuse */
        if (ff_gro_add(w->gro, w->rx_p[i], w->rx_len[i]) < 0)
            STAT_ADD(w, FF_ST_TUN_ERROR, 1);
    items = ff_gro_finish(w->gro);
    for (int j = 0; j < items; j++) {
        int niov = ff_gro_item_iov(w->gro, j, iov, FF_GRO_MAX_IOV);
        int segs = ff_gro_item_segs(w->gro, j), rc, sent;
        size_t want = 0;
        if (niov <= skip || segs <= 0)
            continue;
        for (int i = skip; i < niov; i++)
            want += iov[i].iov_len;
        if (segs > 1 && ff_refused(w->fw, FF_F_TCP_GRO))
            rc = -EINVAL;
        else
            rc = ff_tun_writev(w, iov + skip, niov - skip, want, FF_TUN_WRITE_RETRIES);
        if (rc == 0) {
            tx += (uint64_t)segs;
            merged += (uint64_t)segs - 1;
            tx_bytes += want - (skip ? 0 : FF_VNET_HDR_LEN);
            continue;
        }
        /* a kernel that refuses our GSO frames: stop merging, resend this one as segments */
        if (rc == -EINVAL && segs > 1 && w->reseg) {
            tcp_gro_off(w);
            sent = write_segments(w, j, &tx_bytes);
            tx += (uint64_t)sent;
            STAT_ADD(w, FF_ST_TUN_ERROR, segs - sent);
            continue;
        }
        STAT_ADD(w, FF_ST_TUN_ERROR, segs);
    }
    ff_gro_reset(w->gro);
    STAT_ADD(w, FF_ST_TUN_TX_PACKETS, tx);
    STAT_ADD(w, FF_ST_TUN_TX_BYTES, tx_bytes);
    STAT_ADD(w, FF_ST_TUN_GRO_MERGED, merged);
}

uint32_t ff_udp_to_tun_batch_gro(struct ff_worker *w)
{
    struct ff_batch *b = &w->b;
    const struct ff_table *t;
    uint32_t vlen = w->fw->batch < FF_GRO_RX_MSGS ? w->fw->batch : FF_GRO_RX_MSGS, k = 0;
    uint64_t bytes = 0, dgrams = 0;
    int n;

    for (uint32_t i = 0; i < vlen; i++) {
        struct msghdr *mh = &b->msgs[i].msg_hdr;
        b->iovs[i].iov_base = pkt_buf(b, i);
        b->iovs[i].iov_len = FF_BUF_BYTES;
        mh->msg_namelen = sizeof(b->addrs[i]);
        mh->msg_control = w->rx_cmsg + (size_t)i * FF_GRO_CMSG_BYTES;
        mh->msg_controllen = FF_GRO_CMSG_BYTES;
        mh->msg_flags = 0;
    }
    do
        n = recvmmsg(w->sock_fd, b->msgs, vlen, MSG_DONTWAIT, NULL);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return 0;
    t = read_lock(w);
    for (int i = 0; i < n; i++) {
        struct msghdr *mh = &b->msgs[i].msg_hdr;
        uint32_t sender = ntohl(b->addrs[i].sin_addr.s_addr);
        int trunc = (mh->msg_flags & MSG_TRUNC) != 0;
        int gso = ff_udp_gro_cmsg_size(mh);   /* 0: one datagram */
        struct ff_gro_iter it;
        const uint8_t *dg;
        size_t dlen;
        bytes += b->msgs[i].msg_len;
        if (gso < 0) {
            dgrams++;
            STAT_ADD(w, FF_ST_BAD_LENGTH, 1);
            continue;
        }
        if (b->msgs[i].msg_len == 0) {
            /* an empty datagram: the iterator yields nothing, but it is one (short) datagram */
            dgrams++;
            (void)ff_udp_accept(w, t, pkt_buf(b, (uint32_t)i), 0, sender, trunc);
            continue;
        }
        ff_udp_gro_iter_init(&it, pkt_buf(b, (uint32_t)i), b->msgs[i].msg_len, gso);
        while (ff_udp_gro_next(&it, &dg, &dlen)) {
            uint32_t len;
            dgrams++;
            len = ff_udp_accept(w, t, (uint8_t *)dg, (uint32_t)dlen, sender, trunc);
            if (len && k < FF_GRO_RX_MAX) {
                w->rx_p[k] = (uint8_t *)dg;
                w->rx_len[k++] = len;
            }
        }
    }
    read_unlock(w);       /* leave before the writes, which may wait for room */
    STAT_ADD(w, FF_ST_UDP_RX_PACKETS, dgrams);
    STAT_ADD(w, FF_ST_UDP_RX_BYTES, bytes);
    gro_write(w, k);
    return (uint32_t)n;
}
