/* The tier-1 packet loops (one worker thread per direction) and the helpers the offload loop
 * (ff_fwd_gso.c) shares: TUN writes, sendmmsg, the per-packet routing and acceptance checks. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ff_fwd_int.h"

static inline int stopping(struct ff_fwd *fw)
{
    return __atomic_load_n(&fw->stop, __ATOMIC_ACQUIRE);
}

void ff_wait_out(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};

    (void)poll(&p, 1, FF_POLLOUT_MS);
}

/* writev into the TUN; EAGAIN waits briefly for room up to `retries` times. 0 or -errno. */
int ff_tun_writev(struct ff_worker *w, const struct iovec *iov, int niov, size_t want, int retries)
{
    for (int tries = 0;;) {
        ssize_t r = writev(w->tun_fd, iov, niov);
        if (r == (ssize_t)want)
            return 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN && tries++ < retries) {
            ff_wait_out(w->tun_fd);
            continue;
        }
        return r < 0 ? -errno : -EIO;
    }
}

/* Write one packet into the TUN, behind an all-zero virtio_net_hdr when the TUN has one (no
 * GSO, checksums complete). 0 or -errno; the caller counts. */
int ff_tun_write(struct ff_worker *w, const uint8_t *p, uint32_t len, int retries)
{
    static const uint8_t zero_hdr[FF_VNET_HDR_LEN];
    struct iovec iov[2] = {{(void *)zero_hdr, FF_VNET_HDR_LEN}, {(void *)p, len}};
    int vnet = w->fw->vnet;

    return ff_tun_writev(w, vnet ? iov : iov + 1, vnet ? 2 : 1,
                         len + (vnet ? FF_VNET_HDR_LEN : 0), retries);
}

static uint32_t tun_read_batch(struct ff_worker *w)
{
    struct ff_batch *b = &w->b;
    uint32_t n = 0;
    uint64_t bytes = 0;

    while (n < w->fw->batch) {
        ssize_t r = read(w->tun_fd, pkt_buf(b, n), b->slot);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                STAT_ADD(w, FF_ST_TUN_ERROR, 1);
            break;
        }
        b->lens[n++] = (uint32_t)r;
        bytes += (uint64_t)r;
    }
    STAT_ADD(w, FF_ST_TUN_RX_PACKETS, n);
    STAT_ADD(w, FF_ST_TUN_RX_BYTES, bytes);
    return n;
}

static void send_no_route(struct ff_worker *w, const uint8_t *p, uint32_t len)
{
    int k;

    STAT_ADD(w, FF_ST_NO_ROUTE, 1);
    k = ff_icmp_net_unreach(p, len, w->fw->tun_ip, w->icmp, sizeof(w->icmp));
    /* single try: an ICMP error is not worth stalling the loop for */
    if (k > 0 && ff_tun_write(w, w->icmp, (uint32_t)k, 0) == 0)
        STAT_ADD(w, FF_ST_ICMP_SENT, 1);
}

/* A UDP_SEGMENT train the kernel refused: its count packets, one datagram each (the wire
 * format is one inner packet per datagram either way). */
void ff_send_singly(struct ff_worker *w, const struct msghdr *train, uint32_t count)
{
    struct mmsghdr one[FF_UDP_GSO_SEGS];

    if (count > FF_UDP_GSO_SEGS)     /* ff_udp_gso_plan never groups more */
        count = FF_UDP_GSO_SEGS;
    memset(one, 0, sizeof(one[0]) * count);
    for (uint32_t k = 0; k < count; k++) {
        one[k].msg_hdr.msg_name = train->msg_name;
        one[k].msg_hdr.msg_namelen = train->msg_namelen;
        one[k].msg_hdr.msg_iov = &train->msg_iov[k];
        one[k].msg_hdr.msg_iovlen = 1;
    }
    ff_send_msgs(w, one, count, NULL);
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
    if (!__atomic_load_n(&w->g.gso_off, __ATOMIC_RELAXED)) {
        __atomic_store_n(&w->g.gso_off, 1, __ATOMIC_RELAXED);
        STAT_ADD(w, FF_ST_OFFLOAD_FALLBACKS, 1);
    }
    ff_send_singly(w, train, count);
}

/* sendmmsg m messages; groups (NULL = one packet per message) says how many inner packets each
 * carries (UDP_SEGMENT). Counts per inner packet. A failing message is skipped, except that EIO
 * on a GSO message (UDP GSO refused by the kernel or the device, PERF.md 1.4) turns GSO off for
 * this worker's socket and the train is sent again one datagram at a time; EMSGSIZE/EINVAL on a
 * GSO message (a segment above the path MTU) resends that train one datagram at a time. */
void ff_send_msgs(struct ff_worker *w, struct mmsghdr *msgs, uint32_t m,
                  const struct ff_gso_group *groups)
{
    uint32_t off = 0;
    int retries = 0;

    while (off < m) {
        int gso = groups && groups[off].count > 1, r;
        if (gso && ff_refused(w->fw, FF_F_UDP_GSO)) {
            r = -1;              /* tests: as the kernel would refuse it */
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
            ff_send_singly(w, &msgs[off].msg_hdr, groups[off].count);
            off++;
        } else {
            STAT_ADD(w, FF_ST_SEND_ERROR, groups ? groups[off].count : 1);
            off++;
        }
    }
}

/* The per-packet tun->udp decision for a packet read from the TUN: validate, look up (memo of
 * the last destination of this batch), TTL-1; no route -> ICMP net-unreachable back into the
 * TUN. Returns the peer's slot, or NULL when the packet is dropped (and counted). */
const struct ff_slot *ff_route_packet(struct ff_worker *w, struct ff_memo *memo, uint8_t *p,
                                      uint32_t len)
{
    uint32_t dst;

    if (ff_ipv4_validate(p, len) != FF_PKT_OK) {
        STAT_ADD(w, FF_ST_TUN_INVALID, 1);       /* e.g. IPv6 from the kernel */
        return NULL;
    }
    dst = ff_ipv4_dst(p);
    if (!memo->valid || dst != memo->dst) {       /* bursts usually share a destination */
        memo->slot = ff_table_lookup(memo->t, dst);
        memo->dst = dst;
        memo->valid = 1;
    }
    if (!memo->slot) {
        send_no_route(w, p, len);
        return NULL;
    }
    if (ff_ipv4_dec_ttl(p) < 0) {
        STAT_ADD(w, FF_ST_TTL, 1);
        return NULL;
    }
    return memo->slot;
}

/* One tun->udp batch; returns the number of packets read (0 = TUN drained). */
static uint32_t tun_to_udp_batch(struct ff_worker *w)
{
    struct ff_batch *b = &w->b;
    uint32_t n = tun_read_batch(w), m = 0;
    struct ff_memo memo = {0};

    if (!n)
        return 0;
    memo.t = read_lock(w);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *p = pkt_buf(b, i);
        const struct ff_slot *peer = ff_route_packet(w, &memo, p, b->lens[i]);
        if (!peer)
            continue;
        b->iovs[m].iov_base = p;
        b->iovs[m].iov_len = ff_ipv4_totlen(p);
        b->addrs[m].sin_addr.s_addr = htonl(peer->peer_ip);
        b->addrs[m].sin_port = htons(peer->peer_port);
        b->msgs[m].msg_hdr.msg_iov = &b->iovs[m];
        b->msgs[m].msg_hdr.msg_name = &b->addrs[m];
        m++;
    }
    read_unlock(w);
    ff_send_msgs(w, b->msgs, m, NULL);
    return n;
}

/* Sender and inner-source checks; flannel itself accepts any datagram (FLANNEL.md 4.2). */
static int check_sender(struct ff_worker *w, const struct ff_table *t, uint32_t sender,
                        const uint8_t *p)
{
    const struct ff_slot *s;

    if (!ff_table_has_peer(t, sender)) {
        STAT_ADD(w, FF_ST_UNKNOWN_SENDER, 1);
        return -1;
    }
    s = ff_table_lookup(t, ff_ipv4_src(p));
    if (!s || s->peer_ip != sender) {
        STAT_ADD(w, FF_ST_SPOOFED, 1);
        return -1;
    }
    return 0;
}

static const int verdict_stat[] = {
    [FF_PKT_SHORT] = FF_ST_SHORT, [FF_PKT_BAD_HEADER] = FF_ST_BAD_HEADER,
    [FF_PKT_BAD_LENGTH] = FF_ST_BAD_LENGTH,
};

/* Classify one received datagram (sender in host order; trunc: the buffer was too small):
 * returns its forwardable length, or 0 to drop it (counted). */
uint32_t ff_udp_accept(struct ff_worker *w, const struct ff_table *t, uint8_t *p, uint32_t len,
                       uint32_t sender, int trunc)
{
    int v = trunc ? FF_PKT_BAD_LENGTH : ff_ipv4_validate(p, len);

    if (v != FF_PKT_OK) {
        STAT_ADD(w, verdict_stat[v], 1);
        return 0;
    }
    if ((w->fw->flags & FF_F_ANTI_SPOOF) && check_sender(w, t, sender, p) < 0)
        return 0;
    if (ff_ipv4_dec_ttl(p) < 0) {
        STAT_ADD(w, FF_ST_TTL, 1);
        return 0;
    }
    return ff_ipv4_totlen(p);
}

static uint32_t udp_to_tun_batch(struct ff_worker *w)
{
    struct ff_batch *b = &w->b;
    const struct ff_table *t;
    uint64_t bytes = 0, tx_bytes = 0, tx = 0;
    int n;

    for (uint32_t i = 0; i < w->fw->batch; i++) {
        b->iovs[i].iov_base = pkt_buf(b, i);
        b->iovs[i].iov_len = FF_BUF_BYTES;
        b->msgs[i].msg_hdr.msg_namelen = sizeof(b->addrs[i]);
        b->msgs[i].msg_hdr.msg_flags = 0;
    }
    do
        n = recvmmsg(w->sock_fd, b->msgs, w->fw->batch, MSG_DONTWAIT, NULL);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return 0;
    t = read_lock(w);
    for (int i = 0; i < n; i++) {
        bytes += b->msgs[i].msg_len;
        b->lens[i] = ff_udp_accept(w, t, pkt_buf(b, (uint32_t)i), b->msgs[i].msg_len,
                                   ntohl(b->addrs[i].sin_addr.s_addr),
                                   (b->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0);
    }
    read_unlock(w);       /* leave before the writes, which may wait for room */
    STAT_ADD(w, FF_ST_UDP_RX_PACKETS, n);
    STAT_ADD(w, FF_ST_UDP_RX_BYTES, bytes);
    for (int i = 0; i < n; i++) {
        if (!b->lens[i])
            continue;
        if (ff_tun_write(w, pkt_buf(b, (uint32_t)i), b->lens[i], FF_TUN_WRITE_RETRIES) < 0) {
            STAT_ADD(w, FF_ST_TUN_ERROR, 1);
            continue;
        }
        tx++;
        tx_bytes += b->lens[i];
    }
    STAT_ADD(w, FF_ST_TUN_TX_PACKETS, tx);
    STAT_ADD(w, FF_ST_TUN_TX_BYTES, tx_bytes);
    return (uint32_t)n;
}

typedef uint32_t (*batch_fn)(struct ff_worker *w);

void *ff_worker_main(void *arg)
{
    struct ff_worker *w = arg;
    struct ff_fwd *fw = w->fw;
    /* the loop follows what open accepted: the offload loops also run one part alone (e.g.
     * UDP_GSO over a plain TUN, UDP_GRO without TCP_GRO) */
    batch_fn batch = w->tun_side ? (fw->vnet || (fw->feat & FF_F_UDP_GSO) ? ff_tun_to_udp_batch_gso
                                                                          : tun_to_udp_batch)
                     : (fw->feat & (FF_F_UDP_GRO | FF_F_TCP_GRO)) ? ff_udp_to_tun_batch_gro
                                                                  : udp_to_tun_batch;
    struct pollfd pfd[2] = {
        {.fd = w->tun_side ? w->tun_fd : w->sock_fd, .events = POLLIN},
        {.fd = fw->wake_fd, .events = POLLIN},
    };
    struct timespec backoff = {0, FF_ERROR_BACKOFF_NS};
    uint32_t n, got;

    while (!stopping(fw)) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[1].revents)
            break;
        /* drain until EAGAIN before going back to poll (flannel's "optimistic reads"), then
         * stay awake a little: up to FF_IDLE_SPINS more tries, each after a sched_yield (which
         * hands the core to any runnable thread, e.g. the TCP endpoints, and returns at once
         * when there is none). Sleeping in poll after every drain cost a wakeup (and, on a VM,
         * a halt/IPI round trip) per burst: ~25% of both cores idle and 9.1 Gbit/s for one
         * TCP stream on the 2-vCPU e2e box; with the spin 10.4-10.9, idle ~18%. */
        n = 0;
        for (int idle = 0; !stopping(fw);) {
            if ((got = batch(w)) > 0) {
                n += got;
                idle = 0;
            } else if (idle++ < FF_IDLE_SPINS) {
                sched_yield();
            } else {
                break;
            }
        }
        /* a persistent error condition (e.g. a detached TUN) keeps poll returning at once with
         * nothing to read: back off instead of spinning on a core */
        if (n == 0 && (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)))
            nanosleep(&backoff, NULL);
    }
    return NULL;
}
