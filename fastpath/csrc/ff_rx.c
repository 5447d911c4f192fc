/* udp->tun, one loop for every tier: recvmmsg a batch, check every datagram (validation, the
 * sender, TTL-1), write the accepted packets into the TUN.
 *
 * With UDP_GRO a message may carry a peer's whole burst (a train cut at the gso_size of its
 * cmsg); it is cut back into datagrams, each checked alone. With TCP_GRO (a vnet TUN) the
 * accepted TCP segments of a batch are merged by ff_gro and each merged item is written as one
 * GSO_TCPV4 frame, so the kernel's TCP stack sees up to 64 KiB at a time. Without it every
 * packet is its own item. docs/fastpath.md §"Packet loops". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ff_fwd_int.h"

/* TCP_GRO fallback scratch: one linearized item (vnet hdr + <= 64 KiB) and its segments. */
#define FF_RESEG_BYTES (FF_VNET_HDR_LEN + FF_BUF_BYTES + FF_GSO_SLOT_BYTES)

void ff_rx_free(struct ff_rx *rx)
{
    ff_gro_free(rx->gro);
    free(rx->mem);
    free(rx->msgs);
    free(rx->iovs);
    free(rx->addrs);
    free(rx->cmsg);
    free(rx->pkt);
    free(rx->pkt_len);
    free(rx->reseg);
    memset(rx, 0, sizeof(*rx));
}

int ff_rx_alloc(struct ff_worker *w)
{
    struct ff_rx *rx = &w->rx;
    int tcp = (w->fw->feat & FF_F_TCP_GRO) != 0;
    uint32_t batch = w->fw->batch;

    /* a UDP_GRO message holds up to 64 datagrams: FF_GRO_RX_MSGS keeps a batch to
     * FF_GRO_RX_MAX of them; without UDP_GRO a message is one datagram */
    rx->vlen = (w->fw->feat & FF_F_UDP_GRO) && batch > FF_GRO_RX_MSGS ? FF_GRO_RX_MSGS : batch;
    rx->mem = malloc((size_t)rx->vlen * FF_BUF_BYTES);
    rx->msgs = calloc(rx->vlen, sizeof(*rx->msgs));
    rx->iovs = calloc(rx->vlen, sizeof(*rx->iovs));
    rx->addrs = calloc(rx->vlen, sizeof(*rx->addrs));
    rx->cmsg = aligned_alloc(8, (size_t)rx->vlen * FF_GRO_CMSG_BYTES);
    /* without TCP_GRO (or a vnet header to carry merged items) nothing is merged */
    rx->gro = ff_gro_new(FF_GRO_RX_MAX, tcp ? 0 : FF_GRO_NO_TCP);
    rx->pkt = calloc(FF_GRO_RX_MAX, sizeof(*rx->pkt));
    rx->pkt_len = calloc(FF_GRO_RX_MAX, sizeof(*rx->pkt_len));
    rx->reseg = tcp ? malloc(FF_RESEG_BYTES) : NULL;
    if (!rx->mem || !rx->msgs || !rx->iovs || !rx->addrs || !rx->cmsg || !rx->gro || !rx->pkt ||
        !rx->pkt_len || (tcp && !rx->reseg)) {
        ff_rx_free(rx);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < rx->vlen; i++) {
        rx->iovs[i] = (struct iovec){rx->mem + (size_t)i * FF_BUF_BYTES, FF_BUF_BYTES};
        rx->msgs[i].msg_hdr.msg_iov = &rx->iovs[i];
        rx->msgs[i].msg_hdr.msg_iovlen = 1;
        rx->msgs[i].msg_hdr.msg_name = &rx->addrs[i];
        rx->msgs[i].msg_hdr.msg_control = rx->cmsg + (size_t)i * FF_GRO_CMSG_BYTES;
    }
    return 0;
}

/* ---- checks -------------------------------------------------------------------------------- */
static const enum ff_verdict ip4_drop[] = {
    [FF_IP4_OK] = FF_FORWARD,
    [FF_IP4_SHORT] = FF_DROP_SHORT,
    [FF_IP4_BAD_HEADER] = FF_DROP_BAD_HEADER,
    [FF_IP4_BAD_LENGTH] = FF_DROP_BAD_LENGTH,
};

/* Anti-spoofing: the outer source must be a peer, and the inner source must route back to that
 * very peer. flannel itself accepts any datagram (docs/flannel-compat.md §"udp wire format"). */
static enum ff_verdict check_sender(const struct ff_table *t, uint32_t sender, const uint8_t *p)
{
    const struct ff_slot *s;

    if (!ff_table_has_peer(t, sender))
        return FF_DROP_UNKNOWN_SENDER;
    s = ff_table_lookup(t, ff_ip4_src(p));
    return s && s->peer_ip == sender ? FF_FORWARD : FF_DROP_SPOOFED;
}

/* Anti-spoofing, the destination: a peer may only reach this host's own subnet, and never a
 * special address (loopback, link-local such as a metadata service, multicast, ...) nor the
 * subnet's broadcast address. Without our prefix (0) only the special addresses are refused. */
static enum ff_verdict check_dst(const struct ff_fwd *fw, uint32_t dst)
{
    if (ff_ip4_special(dst))
        return FF_DROP_DST_SPECIAL;
    if (!fw->own_mask)
        return FF_FORWARD;
    if ((dst & fw->own_mask) != fw->own_net)
        return FF_DROP_DST_FOREIGN;
    if (fw->own_mask < 0xfffffffcu && (dst | fw->own_mask) == 0xffffffffu)
        return FF_DROP_DST_SPECIAL;     /* a directed broadcast (RFC 2644: never forwarded) */
    return FF_FORWARD;
}

enum ff_verdict ff_rx_accept(const struct ff_fwd *fw, const struct ff_table *t, uint8_t *p,
                             size_t len, uint32_t sender)
{
    enum ff_verdict v = ip4_drop[ff_ip4_validate(p, len)];

    if (v == FF_FORWARD && (fw->flags & FF_F_ANTI_SPOOF)) {
        v = check_sender(t, sender, p);
        if (v == FF_FORWARD)
            v = check_dst(fw, ff_ip4_dst(p));
    }
    if (v == FF_FORWARD && ff_ip4_dec_ttl(p) == FF_TTL_EXPIRED)
        v = FF_DROP_TTL;
    return v;
}

/* One received datagram (trunc: it did not fit the buffer). On FF_FORWARD its TTL was
 * decremented and its length is its IPv4 total length. */
static enum ff_verdict accept_datagram(struct ff_worker *w, const struct ff_table *t, uint8_t *p,
                                       size_t len, uint32_t sender, bool trunc)
{
    return trunc ? FF_DROP_BAD_LENGTH : ff_rx_accept(w->fw, t, p, len, sender);
}

/* ---- writing ------------------------------------------------------------------------------- */
/* A merged item the kernel refused (EINVAL: e.g. the virtio_net_hdr regression, docs/fastpath.md
 * §"Kill switches and fallbacks"): its head was rewritten in place, so cut the item again, as
 * the kernel would have, into complete segments (ff_gso_split) and write those. Returns the
 * segments written and adds their bytes to *bytes. */
static int write_segments(struct ff_worker *w, int item, uint64_t *bytes)
{
    uint8_t *frame = w->rx.reseg, *seg = w->rx.reseg + FF_VNET_HDR_LEN + FF_BUF_BYTES;
    uint8_t *segp[FF_GSO_MAX_SEGS];
    uint16_t seg_lens[FF_GSO_MAX_SEGS];
    struct virtio_net_hdr h;
    int len = ff_gro_item_copy(w->rx.gro, item, frame, FF_VNET_HDR_LEN + FF_BUF_BYTES), k, ok = 0;
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
    if (__atomic_load_n(&w->rx.tcp_gro_off, __ATOMIC_RELAXED))
        return;
    ff_gro_set_flags(w->rx.gro, FF_GRO_NO_TCP);
    __atomic_store_n(&w->rx.tcp_gro_off, 1, __ATOMIC_RELAXED);
    STAT_ADD(w, FF_ST_OFFLOAD_FALLBACKS, 1);
}

/* Coalesce the k accepted packets and write each item as one TUN frame (without its vnet
 * header on a plain TUN, where nothing is ever merged). */
static void write_items(struct ff_worker *w, uint32_t k)
{
    struct ff_rx *rx = &w->rx;
    struct iovec iov[FF_GRO_MAX_IOV];
    uint64_t tx = 0, tx_bytes = 0, merged = 0;
    int items, skip = w->fw->vnet ? 0 : 1;

    /* k <= FF_GRO_RX_MAX, ff_gro's capacity: ff_gro_add cannot refuse */
    for (uint32_t i = 0; i < k; i++)
        if (ff_gro_add(rx->gro, rx->pkt[i], rx->pkt_len[i]) < 0)
            STAT_ADD(w, FF_ST_TUN_ERROR, 1);
    items = ff_gro_finish(rx->gro);
    for (int j = 0; j < items; j++) {
        int niov = ff_gro_item_iov(rx->gro, j, iov, FF_GRO_MAX_IOV);
        int segs = ff_gro_item_segs(rx->gro, j), rc, sent;
        size_t want = 0;
        if (niov <= skip || segs <= 0)
            continue;
        for (int i = skip; i < niov; i++)
            want += iov[i].iov_len;
        if (segs > 1 && ff_refused(w->fw, FF_F_TCP_GRO))
            rc = -EINVAL;        /* test builds: as the kernel would refuse it */
        else
            rc = ff_tun_writev(w, iov + skip, niov - skip, want, FF_TUN_WRITE_RETRIES);
        if (rc == 0) {
            tx += (uint64_t)segs;
            merged += (uint64_t)segs - 1;
            tx_bytes += want - (skip ? 0 : FF_VNET_HDR_LEN);
            continue;
        }
        /* a kernel that refuses our GSO frames: stop merging, resend this one as segments */
        if (rc == -EINVAL && segs > 1 && rx->reseg) {
            tcp_gro_off(w);
            sent = write_segments(w, j, &tx_bytes);
            tx += (uint64_t)sent;
            STAT_ADD(w, FF_ST_TUN_ERROR, segs - sent);
            continue;
        }
        STAT_ADD(w, FF_ST_TUN_ERROR, segs);
    }
    ff_gro_reset(rx->gro);
    STAT_ADD(w, FF_ST_TUN_TX_PACKETS, tx);
    STAT_ADD(w, FF_ST_TUN_TX_BYTES, tx_bytes);
    STAT_ADD(w, FF_ST_TUN_GRO_MERGED, merged);
}

/* ---- the batch ----------------------------------------------------------------------------- */
static int receive(struct ff_worker *w)
{
    struct ff_rx *rx = &w->rx;
    int n;

    for (uint32_t i = 0; i < rx->vlen; i++) {     /* the fields recvmmsg overwrites */
        struct msghdr *mh = &rx->msgs[i].msg_hdr;
        mh->msg_namelen = sizeof(rx->addrs[i]);
        mh->msg_controllen = FF_GRO_CMSG_BYTES;
        mh->msg_flags = 0;
    }
    do
        n = recvmmsg(w->sock_fd, rx->msgs, rx->vlen, MSG_DONTWAIT, NULL);
    while (n < 0 && errno == EINTR);
    return n;
}

/* The accepted packets fill ff_gro's capacity (messages of more than FF_GRO_RX_MAX /
 * FF_GRO_RX_MSGS datagrams: a UDP_GRO train holds up to 128 since Linux 6.10): write them
 * now, outside the read section, and go on with an empty batch instead of dropping the rest. */
static const struct ff_table *flush_full(struct ff_worker *w, uint32_t *k)
{
    read_unlock(w);
    write_items(w, *k);
    *k = 0;
    return read_lock(w);
}

/* Check the datagrams of message i (a UDP_GRO train or one datagram); the accepted ones join
 * rx->pkt from *k on. Returns the datagrams it held. */
static uint64_t accept_message(struct ff_worker *w, const struct ff_table **tp, uint32_t i,
                               uint32_t *k)
{
    struct ff_rx *rx = &w->rx;
    struct msghdr *mh = &rx->msgs[i].msg_hdr;
    uint8_t *buf = rx->iovs[i].iov_base;
    uint32_t sender = ntohl(rx->addrs[i].sin_addr.s_addr);
    bool trunc = (mh->msg_flags & MSG_TRUNC) != 0;
    int gso = ff_udp_gro_cmsg_size(mh);   /* 0: one datagram */
    uint64_t dgrams = 0;
    struct ff_gro_iter it;
    const uint8_t *dg;
    size_t dlen;

    if (gso < 0) {
        ff_count_drop(w, FF_DROP_BAD_LENGTH);
        return 1;
    }
    if (rx->msgs[i].msg_len == 0) {
        /* an empty datagram: the iterator yields nothing, but it is one (short) datagram */
        ff_count_drop(w, accept_datagram(w, *tp, buf, 0, sender, trunc));
        return 1;
    }
    ff_udp_gro_iter_init(&it, buf, rx->msgs[i].msg_len, gso);
    while (ff_udp_gro_next(&it, &dg, &dlen)) {
        enum ff_verdict v = accept_datagram(w, *tp, (uint8_t *)dg, dlen, sender, trunc);
        dgrams++;
        if (v != FF_FORWARD) {
            ff_count_drop(w, v);
            continue;
        }
        if (*k == FF_GRO_RX_MAX)
            *tp = flush_full(w, k);
        rx->pkt[*k] = (uint8_t *)dg;
        rx->pkt_len[(*k)++] = ff_ip4_tot_len(dg);
    }
    return dgrams;
}

uint32_t ff_rx_batch(struct ff_worker *w)
{
    const struct ff_table *t;
    uint64_t bytes = 0, dgrams = 0;
    uint32_t k = 0;
    int n = receive(w);

    if (n <= 0)
        return 0;
    t = read_lock(w);
    for (int i = 0; i < n; i++) {
        bytes += w->rx.msgs[i].msg_len;
        dgrams += accept_message(w, &t, (uint32_t)i, &k);
    }
    read_unlock(w);       /* leave before the writes, which may wait for room */
    STAT_ADD(w, FF_ST_UDP_RX_PACKETS, dgrams);
    STAT_ADD(w, FF_ST_UDP_RX_BYTES, bytes);
    write_items(w, k);
    return (uint32_t)n;
}
