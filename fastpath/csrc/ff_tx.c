/* tun->udp, one loop for every tier: drain up to `batch` frames from the TUN, check and route
 * every packet (validate, look up, TTL-1; no route -> ICMP net-unreachable back into the TUN),
 * send the kept ones with sendmmsg.
 *
 * A plain TUN hands one packet per read, read straight into its batch slot. A vnet TUN (the
 * TUN_TSO part) hands a virtio_net_hdr and a packet or a TCP superframe of up to 64 KiB;
 * ff_gso_split cuts a superframe into MSS-sized packets with complete checksums. With UDP_GSO,
 * runs of equal-sized packets to one peer leave as one UDP_SEGMENT train (ff_udp_gso_plan);
 * the kernel cuts it back into one datagram per inner packet, so the wire format is flannel's
 * either way. docs/fastpath.md §"Packet loops". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ff_fwd_int.h"

void ff_tx_free(struct ff_tx *tx)
{
    free(tx->mem);
    free(tx->frame);
    free(tx->segp);
    free(tx->seg_lens);
    free(tx->peer);
    free(tx->len);
    free(tx->iov);
    free(tx->groups);
    free(tx->msgs);
    free(tx->addrs);
    free(tx->cmsg);
    memset(tx, 0, sizeof(*tx));
}

int ff_tx_alloc(struct ff_worker *w)
{
    struct ff_tx *tx = &w->tx;
    size_t n = FF_GSO_BATCH_SEGS;
    int vnet = w->fw->vnet;

    tx->slot = vnet ? FF_GSO_SLOT_BYTES : FF_BUF_BYTES;
    tx->mem = malloc((size_t)w->fw->batch * tx->slot);
    tx->frame = vnet ? malloc(FF_VNET_HDR_LEN + FF_BUF_BYTES) : NULL;
    tx->segp = calloc(n, sizeof(*tx->segp));
    tx->seg_lens = calloc(n, sizeof(*tx->seg_lens));
    tx->peer = calloc(n, sizeof(*tx->peer));
    tx->len = calloc(n, sizeof(*tx->len));
    tx->iov = calloc(n, sizeof(*tx->iov));
    tx->groups = calloc(n, sizeof(*tx->groups));
    tx->msgs = calloc(n, sizeof(*tx->msgs));
    tx->addrs = calloc(n, sizeof(*tx->addrs));
    tx->cmsg = aligned_alloc(8, n * FF_UDP_GSO_CMSG_SPACE);
    tx->gso_off = !(w->fw->feat & FF_F_UDP_GSO);
    if (!tx->mem || (vnet && !tx->frame) || !tx->segp || !tx->seg_lens || !tx->peer ||
        !tx->len || !tx->iov || !tx->groups || !tx->msgs || !tx->addrs || !tx->cmsg) {
        ff_tx_free(tx);
        return -ENOMEM;
    }
    return 0;
}

/* ---- reading ------------------------------------------------------------------------------ */
enum frame_read { FRAME_DRAINED, FRAME_OK, FRAME_DROPPED, FRAME_PENDING };

/* One read from a plain TUN: the packet lands in its slot as segment `first` (no copy). */
static enum frame_read read_plain(struct ff_worker *w, uint8_t *slot, uint32_t first)
{
    ssize_t r;

    do
        r = read(w->tun_fd, slot, FF_IP4_MAX_LEN);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno != EAGAIN)
            STAT_ADD(w, FF_ST_TUN_ERROR, 1);
        return FRAME_DRAINED;
    }
    w->tx.segp[first] = slot;
    w->tx.seg_lens[first] = (uint16_t)r;
    return FRAME_OK;
}

/* One read from a vnet TUN, split into the slot as segments first.. (*nseg of them). A
 * superframe of more segments than a slot holds is left in tx->frame (FRAME_PENDING) to be
 * split in chunks after this batch (split_pending). */
static enum frame_read read_vnet(struct ff_worker *w, uint8_t *slot, uint32_t first, int *nseg)
{
    struct ff_tx *tx = &w->tx;
    struct virtio_net_hdr h;
    uint8_t *pkt = tx->frame + FF_VNET_HDR_LEN;
    ssize_t r;
    size_t len, each;
    int k;

    do
        r = read(w->tun_fd, tx->frame, FF_VNET_HDR_LEN + FF_BUF_BYTES);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno != EAGAIN)
            STAT_ADD(w, FF_ST_TUN_ERROR, 1);
        return FRAME_DRAINED;
    }
    if (r <= (ssize_t)FF_VNET_HDR_LEN)
        return FRAME_DROPPED;
    memcpy(&h, tx->frame, sizeof(h));
    len = (size_t)r - FF_VNET_HDR_LEN;
    k = ff_gso_count(&h, pkt, len);
    if (k <= 0)
        return FRAME_DROPPED;
    if (k > FF_GSO_MAX_SEGS) {
        tx->pend_h = h;
        tx->pend_len = len;
        tx->pend_next = 0;
        tx->pend_total = (unsigned)k;
        STAT_ADD(w, FF_ST_TUN_GSO_FRAMES, 1);
        return FRAME_PENDING;
    }
    /* segment i at slot + i*each: gso_size payload plus at most 120 header bytes each */
    each = h.gso_type == VIRTIO_NET_HDR_GSO_NONE ? tx->slot : (size_t)h.gso_size + FF_GSO_SEG_HDR_MAX;
    for (int i = 0; i < k; i++)
        tx->segp[first + (uint32_t)i] = slot + (size_t)i * each;
    k = ff_gso_split(&h, pkt, len, &tx->segp[first], each, &tx->seg_lens[first], FF_GSO_MAX_SEGS);
    if (k <= 0)
        return FRAME_DROPPED;
    if (h.gso_type != VIRTIO_NET_HDR_GSO_NONE)
        STAT_ADD(w, FF_ST_TUN_GSO_FRAMES, 1);
    *nseg = k;
    return FRAME_OK;
}

static void count_read(struct ff_worker *w, uint32_t n)
{
    uint64_t bytes = 0;

    for (uint32_t i = 0; i < n; i++)
        bytes += w->tx.seg_lens[i];
    STAT_ADD(w, FF_ST_TUN_RX_PACKETS, n);
    STAT_ADD(w, FF_ST_TUN_RX_BYTES, bytes);
}

/* Drain up to `batch` frames; returns the frames read (dropped ones count: the drain goes on)
 * and their segments in *nseg. */
static uint32_t read_frames(struct ff_worker *w, uint32_t *nseg)
{
    /* room for a whole superframe's segments must be left before each read */
    uint32_t per_frame = w->fw->vnet ? FF_GSO_MAX_SEGS : 1, frames = 0, n = 0;

    while (frames < w->fw->batch && n + per_frame <= FF_GSO_BATCH_SEGS) {
        uint8_t *slot = w->tx.mem + (size_t)frames * w->tx.slot;
        int k = 1;
        enum frame_read r = w->fw->vnet ? read_vnet(w, slot, n, &k) : read_plain(w, slot, n);
        if (r == FRAME_DRAINED)
            break;
        frames++;
        if (r == FRAME_DROPPED) {
            STAT_ADD(w, FF_ST_TUN_INVALID, 1);   /* malformed/unsupported frame */
            continue;
        }
        if (r == FRAME_PENDING)
            break;                               /* tx->frame must not be read over */
        n += (uint32_t)k;
    }
    count_read(w, n);
    *nseg = n;
    return frames;
}

/* The next chunk of the pending superframe, split over the whole batch memory (free again:
 * the batch before it has left). Returns its segments (0 when done). */
static uint32_t split_pending(struct ff_worker *w)
{
    struct ff_tx *tx = &w->tx;
    size_t each = (size_t)tx->pend_h.gso_size + FF_GSO_SEG_HDR_MAX;
    size_t room = (size_t)w->fw->batch * tx->slot / each;
    int cap = room < FF_GSO_BATCH_SEGS ? (int)room : FF_GSO_BATCH_SEGS, k;

    for (int i = 0; i < cap; i++)
        tx->segp[i] = tx->mem + (size_t)i * each;
    k = ff_gso_split_range(&tx->pend_h, tx->frame + FF_VNET_HDR_LEN, tx->pend_len, tx->pend_next,
                           tx->segp, each, tx->seg_lens, cap);
    if (k <= 0) {            /* ff_gso_count accepted it: cannot happen, but never loop */
        tx->pend_next = tx->pend_total = 0;
        return 0;
    }
    tx->pend_next += (unsigned)k;
    if (tx->pend_next >= tx->pend_total)
        tx->pend_next = tx->pend_total = 0;
    count_read(w, (uint32_t)k);
    return (uint32_t)k;
}

/* ---- routing ------------------------------------------------------------------------------ */
/* The last destination of this batch and its peer: bursts usually share a destination. */
struct memo {
    const struct ff_table *t;
    const struct ff_slot *slot;
    uint32_t dst;
    bool valid;
};

static enum ff_verdict route(struct memo *m, uint8_t *p, uint32_t len, const struct ff_slot **peer)
{
    uint32_t dst;

    if (ff_ip4_validate(p, len) != FF_IP4_OK)
        return FF_DROP_TUN_INVALID;              /* e.g. IPv6 from the kernel */
    dst = ff_ip4_dst(p);
    if (!m->valid || dst != m->dst) {
        m->slot = ff_table_lookup(m->t, dst);
        m->dst = dst;
        m->valid = true;
    }
    if (!m->slot)
        return FF_DROP_NO_ROUTE;
    if (ff_ip4_dec_ttl(p) == FF_TTL_EXPIRED)
        return FF_DROP_TTL;
    *peer = m->slot;
    return FF_FORWARD;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* flannel answers an unknown destination with ICMP net-unreachable into the TUN; ours are
 * rate-limited per forwarder (a local sender scanning unknown subnets must not make us spend
 * a TUN write per packet), the ones over the limit counted in icmp_suppressed. */
static void send_no_route(struct ff_worker *w, const uint8_t *p, uint32_t len)
{
    int k;

    if (!ff_icmp_due(p))
        return;
    if (!ff_ratelimit_take(&w->fw->icmp_tat, mono_ns(), FF_ICMP_INTERVAL_NS, FF_ICMP_BURST)) {
        STAT_ADD(w, FF_ST_ICMP_SUPPRESSED, 1);
        return;
    }
    k = ff_icmp_net_unreach(p, len, w->fw->tun_ip, w->icmp, sizeof(w->icmp));
    /* single try: an ICMP error is not worth stalling the loop for */
    if (k > 0 && ff_tun_write(w, w->icmp, (uint32_t)k, 0) == 0)
        STAT_ADD(w, FF_ST_ICMP_SENT, 1);
}

/* ---- sending ------------------------------------------------------------------------------ */
static void send_msgs(struct ff_worker *w, struct mmsghdr *msgs, uint32_t m,
                      const struct ff_gso_group *groups);

/* A UDP_SEGMENT train the kernel refused: its count packets, one datagram each (the wire
 * format is one inner packet per datagram either way). */
static void send_singly(struct ff_worker *w, const struct msghdr *train, uint32_t count)
{
    struct mmsghdr one[FF_UDP_GSO_MAX_SEGS];

    if (count > FF_UDP_GSO_MAX_SEGS)     /* ff_udp_gso_plan never groups more */
        count = FF_UDP_GSO_MAX_SEGS;
    memset(one, 0, sizeof(one[0]) * count);
    for (uint32_t k = 0; k < count; k++) {
        one[k].msg_hdr.msg_name = train->msg_name;
        one[k].msg_hdr.msg_namelen = train->msg_namelen;
        one[k].msg_hdr.msg_iov = &train->msg_iov[k];
        one[k].msg_hdr.msg_iovlen = 1;
    }
    send_msgs(w, one, count, NULL);
}

static void count_sent(struct ff_worker *w, const struct mmsghdr *msgs, uint32_t from,
                       uint32_t to, const struct ff_gso_group *groups)
{
    uint64_t pkts = 0, bytes = 0;

    for (uint32_t k = from; k < to; k++) {
        pkts += groups ? groups[k].count : 1;
        bytes += msgs[k].msg_len;
    }
    STAT_ADD(w, FF_ST_UDP_TX_PACKETS, pkts);
    STAT_ADD(w, FF_ST_UDP_TX_BYTES, bytes);
}

/* EIO on a UDP_SEGMENT train: GSO off for this worker's socket (once counted), the train resent
 * one datagram at a time. */
static void gso_refused(struct ff_worker *w, const struct msghdr *train, uint32_t count)
{
    if (!__atomic_load_n(&w->tx.gso_off, __ATOMIC_RELAXED)) {
        __atomic_store_n(&w->tx.gso_off, 1, __ATOMIC_RELAXED);
        STAT_ADD(w, FF_ST_OFFLOAD_FALLBACKS, 1);
    }
    send_singly(w, train, count);
}

/* sendmmsg m messages; groups (NULL = one packet per message) says how many inner packets each
 * carries (UDP_SEGMENT). Counts per inner packet. A failing message is skipped, except that EIO
 * on a GSO message (UDP GSO refused by the kernel or the device) turns GSO off for this
 * worker's socket and the train is sent again one datagram at a time; EMSGSIZE/EINVAL on a GSO
 * message (a segment above the path MTU) resends that train one datagram at a time. */
static void send_msgs(struct ff_worker *w, struct mmsghdr *msgs, uint32_t m,
                      const struct ff_gso_group *groups)
{
    uint32_t off = 0;
    int retries = 0;

    while (off < m) {
        int gso = groups && groups[off].count > 1, r;
        if (gso && ff_refused(w->fw, FF_F_UDP_GSO)) {
            r = -1;              /* test builds: as the kernel would refuse it */
            errno = EIO;
        } else
            r = sendmmsg(w->sock_fd, msgs + off, m - off, 0);
        if (r > 0) {
            count_sent(w, msgs, off, off + (uint32_t)r, groups);
            off += (uint32_t)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == ENOBUFS) && retries++ < FF_SEND_RETRIES) {
            ff_wait_out(w->sock_fd);
        } else if (r < 0 && errno == EIO && gso) {
            gso_refused(w, &msgs[off].msg_hdr, groups[off].count);
            off++;
        } else if (r < 0 && (errno == EMSGSIZE || errno == EINVAL) && gso) {
            /* the path MTU to this peer is below a segment (a learned PMTU, a smaller route
             * MTU): the kernel refuses trains it would have to fragment, but fragments single
             * datagrams, as for flannel. Resend this train singly; GSO stays on (other peers). */
            send_singly(w, &msgs[off].msg_hdr, groups[off].count);
            off++;
        } else {
            STAT_ADD(w, FF_ST_SEND_ERROR, groups ? groups[off].count : 1);
            off++;
        }
    }
}

/* Group the m kept segments into one message per train (or per packet with GSO off). */
static int plan_groups(struct ff_worker *w, uint32_t m)
{
    struct ff_tx *tx = &w->tx;
    int off = __atomic_load_n(&tx->gso_off, __ATOMIC_RELAXED);
    int n = ff_udp_gso_plan(tx->peer, tx->len, (int)m, off ? 1 : FF_UDP_GSO_MAX_SEGS,
                            FF_UDP_GSO_MAX_BYTES, tx->groups, FF_GSO_BATCH_SEGS);

    for (int j = 0; j < n; j++) {
        struct ff_gso_group *gr = &tx->groups[j];
        struct msghdr *mh = &tx->msgs[j].msg_hdr;
        uint64_t key = tx->peer[gr->start];
        uint8_t *cm = tx->cmsg + (size_t)j * FF_UDP_GSO_CMSG_SPACE;
        tx->addrs[j].sin_family = AF_INET;
        tx->addrs[j].sin_addr.s_addr = htonl((uint32_t)(key >> 16));
        tx->addrs[j].sin_port = htons((uint16_t)key);
        mh->msg_name = &tx->addrs[j];
        mh->msg_namelen = sizeof(tx->addrs[j]);
        mh->msg_iov = &tx->iov[gr->start];
        mh->msg_iovlen = gr->count;
        mh->msg_control = NULL;
        mh->msg_controllen = 0;
        if (gr->gso_size) {
            int cl = ff_udp_gso_cmsg(cm, FF_UDP_GSO_CMSG_SPACE, gr->gso_size);
            if (cl <= 0) {
                /* never send a train without its UDP_SEGMENT cmsg: it would leave as one
                 * datagram holding several packets. Plan again, one packet per datagram. */
                __atomic_store_n(&tx->gso_off, 1, __ATOMIC_RELAXED);
                STAT_ADD(w, FF_ST_OFFLOAD_FALLBACKS, 1);
                return plan_groups(w, m);
            }
            mh->msg_control = cm;
            mh->msg_controllen = (size_t)cl;
        }
    }
    return n;
}

/* Route the nseg segments now in the batch and send the kept ones. */
static void forward(struct ff_worker *w, uint32_t nseg)
{
    struct ff_tx *tx = &w->tx;
    struct memo memo = {0};
    uint32_t m = 0;
    int groups;

    memo.t = read_lock(w);
    for (uint32_t i = 0; i < nseg; i++) {
        const struct ff_slot *peer = NULL;
        enum ff_verdict v = route(&memo, tx->segp[i], tx->seg_lens[i], &peer);
        if (v != FF_FORWARD) {
            ff_count_drop(w, v);
            if (v == FF_DROP_NO_ROUTE)
                send_no_route(w, tx->segp[i], tx->seg_lens[i]);
            continue;
        }
        tx->peer[m] = ff_peer_key(peer->peer_ip, peer->peer_port);
        tx->len[m] = ff_ip4_tot_len(tx->segp[i]);
        tx->iov[m].iov_base = tx->segp[i];
        tx->iov[m].iov_len = tx->len[m];
        m++;
    }
    read_unlock(w);
    groups = plan_groups(w, m);
    if (groups > 0)
        send_msgs(w, tx->msgs, (uint32_t)groups, tx->groups);
}

uint32_t ff_tx_batch(struct ff_worker *w)
{
    uint32_t nseg, frames = read_frames(w, &nseg);

    if (!frames)
        return 0;
    forward(w, nseg);
    while (w->tx.pend_total)             /* a superframe too large for one slot, in chunks */
        forward(w, split_pending(w));
    return frames;
}
