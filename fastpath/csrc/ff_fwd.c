/* Forwarder lifecycle, route publication (epoch-based reclamation) and the two packet loops. */
#define _GNU_SOURCE
#include "ff_fwd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ff_fwd_int.h"

const char *const ff_stat_names[FF_ST__COUNT] = {
    "tun_rx_packets", "tun_rx_bytes", "udp_tx_packets", "udp_tx_bytes",
    "udp_rx_packets", "udp_rx_bytes", "tun_tx_packets", "tun_tx_bytes",
    "no_route", "ttl", "short", "bad_header", "bad_length",
    "unknown_sender", "spoofed", "send_error", "tun_error",
    "icmp_sent", "tun_invalid", "tun_gso_frames",
    "tun_gro_merged",
};

static void wait_readers(struct ff_fwd *fw)
{
    struct timespec ts = {0, 20000};

    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int i = 0; i < FF_NWORKERS; i++) {
        uint64_t e = __atomic_load_n(&fw->w[i].epoch, __ATOMIC_ACQUIRE);
        if (!(e & 1))
            continue;
        while (__atomic_load_n(&fw->w[i].epoch, __ATOMIC_ACQUIRE) == e)
            nanosleep(&ts, NULL);
    }
}

/* Caller holds wlock. Publishes nt and frees the previous table once no worker can see it. */
static void publish(struct ff_fwd *fw, struct ff_table *nt)
{
    struct ff_table *old = fw->table;

    __atomic_store_n(&fw->table, nt, __ATOMIC_RELEASE);
    wait_readers(fw);
    ff_table_free(old);
}

/* ---- route updates ------------------------------------------------------------------------ */
int ff_fwd_replace_routes(struct ff_fwd *fw, const struct ff_route *routes, size_t n)
{
    struct ff_table *nt;
    int rc = ff_table_build(routes, n, &nt);   /* built off-lock: workers keep forwarding */

    if (rc < 0)
        return rc;
    pthread_mutex_lock(&fw->wlock);
    publish(fw, nt);
    pthread_mutex_unlock(&fw->wlock);
    return 0;
}

int ff_fwd_add_route(struct ff_fwd *fw, const struct ff_route *r)
{
    struct ff_table *nt = NULL;
    int rc;

    pthread_mutex_lock(&fw->wlock);
    rc = ff_table_clone(fw->table, &nt);
    if (rc == 0 && (rc = ff_table_insert(nt, r)) == 0 && (rc = ff_table_finalize(nt)) == 0)
        publish(fw, nt);
    else
        ff_table_free(nt);
    pthread_mutex_unlock(&fw->wlock);
    return rc;
}

int ff_fwd_remove_route(struct ff_fwd *fw, uint32_t net, uint8_t prefix)
{
    struct ff_table *nt = NULL;
    int rc;

    pthread_mutex_lock(&fw->wlock);
    rc = ff_table_clone(fw->table, &nt);
    if (rc == 0 && (rc = ff_table_remove(nt, net, prefix)) == 0 &&
        (rc = ff_table_finalize(nt)) == 0)
        publish(fw, nt);
    else
        ff_table_free(nt);
    pthread_mutex_unlock(&fw->wlock);
    return rc;
}

long ff_fwd_routes(struct ff_fwd *fw, struct ff_route *out, size_t cap)
{
    long n;

    pthread_mutex_lock(&fw->wlock);
    n = (long)fw->table->count;
    if (out)
        ff_table_routes(fw->table, out, cap);
    pthread_mutex_unlock(&fw->wlock);
    return n;
}

long ff_fwd_route_count(struct ff_fwd *fw)
{
    return ff_fwd_routes(fw, NULL, 0);
}

void ff_fwd_stats(const struct ff_fwd *fw, uint64_t out[FF_ST__COUNT])
{
    memset(out, 0, sizeof(uint64_t) * FF_ST__COUNT);
    for (int w = 0; w < FF_NWORKERS; w++)
        for (int i = 0; i < FF_ST__COUNT; i++)
            out[i] += __atomic_load_n(&fw->w[w].stats[i], __ATOMIC_RELAXED);
}

/* ---- packet loops ------------------------------------------------------------------------- */
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
        ssize_t r = writev(w->fw->tun_fd, iov, niov);
        if (r == (ssize_t)want)
            return 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN && tries++ < retries) {
            ff_wait_out(w->fw->tun_fd);
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
        ssize_t r = read(w->fw->tun_fd, pkt_buf(b, n), b->slot);
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

/* sendmmsg m messages; groups (NULL = one packet per message) says how many inner packets each
 * carries (UDP_SEGMENT). Counts per inner packet. A failing message is skipped; EIO on a GSO
 * message (UDP GSO refused by the kernel or device, PERF.md 1.4) also turns GSO off for this
 * worker from the next batch. */
void ff_send_msgs(struct ff_worker *w, struct mmsghdr *msgs, uint32_t m,
                  const struct ff_gso_group *groups)
{
    uint32_t off = 0;
    int retries = 0;

    while (off < m) {
        int r = sendmmsg(w->fw->sock_fd, msgs + off, m - off, 0);
        if (r > 0) {
            uint64_t pkts = 0, bytes = 0;
            for (uint32_t k = off; k < off + (uint32_t)r; k++) {
                pkts += groups ? groups[k].count : 1;
                bytes += msgs[k].msg_len;
            }
            STAT_ADD(w, FF_ST_UDP_TX_PACKETS, pkts);
            STAT_ADD(w, FF_ST_UDP_TX_BYTES, bytes);
            off += (uint32_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == ENOBUFS) && retries++ < FF_SEND_RETRIES) {
            ff_wait_out(w->fw->sock_fd);
            continue;
        }
        if (r < 0 && errno == EIO && groups && groups[off].count > 1)
            w->g.gso_off = 1;
        STAT_ADD(w, FF_ST_SEND_ERROR, groups ? groups[off].count : 1);
        off++;
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
        n = recvmmsg(w->fw->sock_fd, b->msgs, w->fw->batch, MSG_DONTWAIT, NULL);
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

static void *worker_main(void *arg)
{
    struct ff_worker *w = arg;
    struct ff_fwd *fw = w->fw;
    int tun_side = (w == &fw->w[DIR_TUN_TO_UDP]);
    struct pollfd pfd[2] = {
        {.fd = tun_side ? fw->tun_fd : fw->sock_fd, .events = POLLIN},
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
        /* drain until EAGAIN before going back to poll (flannel's "optimistic reads") */
        n = 0;
        while (!stopping(fw) && (got = !tun_side ? (fw->vnet ? ff_udp_to_tun_batch_gro(w)
                                                              : udp_to_tun_batch(w))
                                       : fw->vnet ? ff_tun_to_udp_batch_gso(w)
                                       : tun_to_udp_batch(w)) > 0)
            n += got;
        /* a persistent error condition (e.g. a detached TUN) keeps poll returning at once with
         * nothing to read: back off instead of spinning on a core */
        if (n == 0 && (pfd[0].revents & (POLLERR | POLLHUP | POLLNVAL)))
            nanosleep(&backoff, NULL);
    }
    return NULL;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */
static void batch_free(struct ff_batch *b)
{
    free(b->mem);
    free(b->lens);
    free(b->msgs);
    free(b->iovs);
    free(b->addrs);
    memset(b, 0, sizeof(*b));
}

static int batch_alloc(struct ff_batch *b, uint32_t cap, size_t slot)
{
    b->cap = cap;
    b->slot = slot;
    b->mem = malloc((size_t)cap * slot);
    b->lens = calloc(cap, sizeof(*b->lens));
    b->msgs = calloc(cap, sizeof(*b->msgs));
    b->iovs = calloc(cap, sizeof(*b->iovs));
    b->addrs = calloc(cap, sizeof(*b->addrs));
    if (!b->mem || !b->lens || !b->msgs || !b->iovs || !b->addrs) {
        batch_free(b);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < cap; i++) {
        b->addrs[i].sin_family = AF_INET;
        b->msgs[i].msg_hdr.msg_iov = &b->iovs[i];
        b->msgs[i].msg_hdr.msg_iovlen = 1;
        b->msgs[i].msg_hdr.msg_name = &b->addrs[i];
        b->msgs[i].msg_hdr.msg_namelen = sizeof(b->addrs[i]);
    }
    return 0;
}

static int open_fds(struct ff_fwd *fw, const struct ff_opts *o)
{
    int rc;

    if (o->tun_fd >= 0)
        rc = ff_tun_adopt(o->tun_fd, fw->vnet, fw->tun_name, sizeof(fw->tun_name));
    else
        rc = ff_tun_open(o->tun_name ? o->tun_name : "flannel%d", fw->vnet, fw->tun_name,
                         sizeof(fw->tun_name));
    if (rc < 0)
        return rc;
    fw->tun_fd = rc;
    if ((rc = ff_udp_open(o->bind_ip, o->port)) < 0)
        return rc;
    fw->sock_fd = rc;
    if ((rc = ff_sock_port(fw->sock_fd)) < 0)
        return rc;
    fw->port = (uint16_t)rc;
    /* offload: receive UDP_GRO trains (one skb per peer burst); without it (old kernel) every
     * datagram arrives on its own and the loop is the same */
    if (fw->vnet)
        (void)ff_udp_enable_gro(fw->sock_fd);
    fw->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fw->wake_fd < 0 ? -errno : 0;
}

int ff_fwd_open(struct ff_fwd **out, const struct ff_opts *o)
{
    struct ff_fwd *fw;
    int rc;

    if (o->batch > FF_MAX_BATCH)
        return -EINVAL;
    if (posix_memalign((void **)&fw, 64, sizeof(*fw)))
        return -ENOMEM;
    memset(fw, 0, sizeof(*fw));
    fw->tun_fd = fw->sock_fd = fw->wake_fd = -1;
    fw->tun_ip = o->tun_ip;
    fw->flags = o->flags;
    fw->batch = o->batch ? o->batch : FF_DEFAULT_BATCH;
    fw->vnet = (o->flags & FF_F_OFFLOAD) != 0;
    pthread_mutex_init(&fw->wlock, NULL);
    rc = ff_table_build(NULL, 0, &fw->table);
    for (int i = 0; rc == 0 && i < FF_NWORKERS; i++) {
        fw->w[i].fw = fw;
        int gso = fw->vnet && i == DIR_TUN_TO_UDP;
        rc = batch_alloc(&fw->w[i].b, fw->batch, gso ? FF_GSO_SLOT_BYTES : FF_BUF_BYTES);
        if (rc == 0 && gso)
            rc = ff_gso_batch_alloc(&fw->w[i].g);
        if (rc == 0 && fw->vnet && i == DIR_UDP_TO_TUN)
            rc = ff_gro_rx_alloc(&fw->w[i]);
    }
    if (rc == 0)
        rc = open_fds(fw, o);
    if (rc < 0) {
        ff_fwd_close(fw);
        return rc;
    }
    *out = fw;
    return 0;
}

const char *ff_fwd_tun_name(const struct ff_fwd *fw) { return fw->tun_name; }
uint16_t ff_fwd_port(const struct ff_fwd *fw) { return fw->port; }

int ff_fwd_start(struct ff_fwd *fw)
{
    sigset_t all, old;
    uint64_t junk;
    int rc = 0;

    if (fw->running)
        return -EALREADY;
    (void)!read(fw->wake_fd, &junk, sizeof(junk));   /* clear a previous stop */
    __atomic_store_n(&fw->stop, 0, __ATOMIC_RELEASE);
    /* workers block all signals so they are delivered to the embedding (Python) main thread */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 0; i < FF_NWORKERS && rc == 0; i++) {
        rc = -pthread_create(&fw->w[i].thread, NULL, worker_main, &fw->w[i]);
        fw->w[i].started = rc == 0;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    fw->running = 1;
    if (rc < 0)
        ff_fwd_stop(fw);
    return rc;
}

int ff_fwd_stop(struct ff_fwd *fw)
{
    uint64_t one = 1;

    if (!fw->running)
        return 0;
    __atomic_store_n(&fw->stop, 1, __ATOMIC_RELEASE);
    (void)!write(fw->wake_fd, &one, sizeof(one));
    for (int i = 0; i < FF_NWORKERS; i++) {
        if (fw->w[i].started)
            pthread_join(fw->w[i].thread, NULL);
        fw->w[i].started = 0;
    }
    fw->running = 0;
    return 0;
}

void ff_fwd_close(struct ff_fwd *fw)
{
    if (!fw)
        return;
    ff_fwd_stop(fw);
    if (fw->tun_fd >= 0)
        close(fw->tun_fd);
    if (fw->sock_fd >= 0)
        close(fw->sock_fd);
    if (fw->wake_fd >= 0)
        close(fw->wake_fd);
    for (int i = 0; i < FF_NWORKERS; i++) {
        batch_free(&fw->w[i].b);
        ff_gso_batch_free(&fw->w[i].g);
        ff_gro_rx_free(&fw->w[i]);
    }
    ff_table_free(fw->table);
    pthread_mutex_destroy(&fw->wlock);
    free(fw);
}
