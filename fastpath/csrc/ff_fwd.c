/* Forwarder lifecycle, route publication (epoch-based reclamation), counters. The worker
 * thread is ff_loop.c, its batches ff_tx.c (tun->udp) and ff_rx.c (udp->tun); the per-peer
 * counters and their indices ff_peers.c. */
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
    "unknown_sender", "spoofed", "send_error", "tun_error", "tun_invalid",
    "dst_special", "dst_foreign",
    "icmp_sent", "tun_gso_frames",
    "tun_gro_merged", "offload_fallbacks",
    "icmp_suppressed",
};

static void wait_readers(struct ff_fwd *fw)
{
    struct timespec ts = {0, 20000};

    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (uint32_t i = 0; i < fw->nw; i++) {
        uint64_t e = __atomic_load_n(&fw->w[i].epoch, __ATOMIC_ACQUIRE);
        if (!(e & 1))
            continue;
        while (__atomic_load_n(&fw->w[i].epoch, __ATOMIC_ACQUIRE) == e)
            nanosleep(&ts, NULL);
    }
}

/* Caller holds wlock. Gives nt its counter indices, publishes it and frees the previous table
 * once no worker can see it (and the indices nt dropped once no worker counts into them). */
static int publish(struct ff_fwd *fw, struct ff_table *nt)
{
    struct ff_table *old = fw->table;
    int rc = ff_peers_assign(fw, nt, old);

    if (rc < 0)
        return rc;
    __atomic_store_n(&fw->table, nt, __ATOMIC_RELEASE);
    wait_readers(fw);
    ff_peers_release(fw, old, nt);
    ff_table_free(old);
    return 0;
}

/* ---- route updates ------------------------------------------------------------------------ */
int ff_fwd_replace_routes(struct ff_fwd *fw, const struct ff_route *routes, size_t n)
{
    struct ff_table *nt;
    int rc = ff_table_build(routes, n, &nt);   /* built off-lock: workers keep forwarding */

    if (rc < 0)
        return rc;
    pthread_mutex_lock(&fw->wlock);
    if ((rc = publish(fw, nt)) < 0)
        ff_table_free(nt);
    pthread_mutex_unlock(&fw->wlock);
    return rc;
}

int ff_fwd_add_route(struct ff_fwd *fw, const struct ff_route *r)
{
    struct ff_table *nt = NULL;
    int rc;

    pthread_mutex_lock(&fw->wlock);
    rc = ff_table_clone(fw->table, &nt);
    if (rc == 0 && (rc = ff_table_insert(nt, r)) == 0)
        rc = publish(fw, nt);
    if (rc < 0)
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
    if (rc == 0 && (rc = ff_table_remove(nt, net, prefix)) == 0)
        rc = publish(fw, nt);
    if (rc < 0)
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

static void sum_stats(const struct ff_fwd *fw, uint32_t from, uint32_t to, uint64_t *out)
{
    memset(out, 0, sizeof(uint64_t) * FF_ST__COUNT);
    for (uint32_t w = from; w < to; w++)
        for (int i = 0; i < FF_ST__COUNT; i++)
            out[i] += __atomic_load_n(&fw->w[w].stats[i], __ATOMIC_RELAXED);
}

void ff_fwd_stats(const struct ff_fwd *fw, uint64_t out[FF_ST__COUNT])
{
    sum_stats(fw, 0, fw->nw, out);
}

int ff_fwd_queue_stats(const struct ff_fwd *fw, uint32_t q, uint64_t out[FF_ST__COUNT])
{
    if (q >= fw->nq)
        return -ERANGE;
    sum_stats(fw, 2 * q, 2 * q + 2, out);
    return 0;
}

uint32_t ff_fwd_workers(const struct ff_fwd *fw) { return fw->nq; }

uint32_t ff_fwd_features(const struct ff_fwd *fw)
{
    uint32_t f = fw->feat;

    for (uint32_t i = 0; i < fw->nw; i++) {
        const struct ff_worker *w = &fw->w[i];
        if (w->tun_side && __atomic_load_n(&w->tx.gso_off, __ATOMIC_RELAXED))
            f &= ~FF_F_UDP_GSO;
        if (!w->tun_side && __atomic_load_n(&w->rx.tcp_gro_off, __ATOMIC_RELAXED))
            f &= ~FF_F_TCP_GRO;
    }
    return f;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */
/* A part the kernel refused at open: off with the parts that need it, counted under the refused
 * part (the agent logs the difference between what it asked for and ff_fwd_features). */
static void fall_back(struct ff_fwd *fw, uint32_t refused, uint32_t parts)
{
    fw->feat &= ~parts;
    ff_count_fallback(&fw->w[0], refused);
}

/* The TUN's first queue, then nq-1 more by its name. TUN_TSO refused (IFF_VNET_HDR or
 * TUNSETOFFLOAD failing where a plain TUN opens) -> a plain TUN, without TUN_TSO and TCP_GRO. */
static int open_tun(struct ff_fwd *fw, const struct ff_opts *o)
{
    const char *name = o->tun_name ? o->tun_name : "flannel%d";
    int mq = fw->nq > 1, rc;

    if (o->tun_fd >= 0)
        rc = ff_tun_adopt(o->tun_fd, fw->vnet, mq, fw->tun_name, sizeof(fw->tun_name));
    else {
        rc = fw->vnet && ff_refused(fw, FF_F_TUN_TSO) ? -EINVAL
             : ff_tun_open(name, fw->vnet, mq, fw->tun_name, sizeof(fw->tun_name));
        if (rc < 0 && fw->vnet &&
            (rc = ff_tun_open(name, 0, mq, fw->tun_name, sizeof(fw->tun_name))) >= 0) {
            fw->vnet = 0;
            fall_back(fw, FF_F_TUN_TSO, FF_F_TUN_TSO | FF_F_TCP_GRO);
        }
    }
    if (rc < 0)
        return rc;
    fw->tun_fds[0] = rc;
    for (uint32_t q = 1; q < fw->nq; q++) {
        if ((rc = ff_tun_open(fw->tun_name, fw->vnet, 1, NULL, 0)) < 0)
            return rc;
        fw->tun_fds[q] = rc;
    }
    return 0;
}

/* A send socket for worker q of nq whose ephemeral port is q modulo nq, so that a peer's
 * ff_udp_steer_by_sport group hands its datagrams to that peer's worker q: one inner flow (one
 * TUN queue here) always leaves from one port and lands on one receiving thread, and distinct
 * queues spread over distinct threads (a source port per worker, not per flow, keeps UDP GRO
 * batches large: docs/fastpath.md §"Multi-queue tier"). Ports are random: after FF_PORT_TRIES
 * the last one is kept. */
#define FF_PORT_TRIES 64
static int open_tx(uint32_t bind_ip, uint32_t q, uint32_t nq)
{
    int spare[FF_PORT_TRIES], n = 0, fd = -1;

    while (n < FF_PORT_TRIES) {
        int port;
        if ((fd = ff_udp_open(bind_ip, 0, 0)) < 0)
            break;
        if ((port = ff_sock_port(fd)) < 0 || (uint32_t)port % nq == q)
            break;
        spare[n++] = fd;     /* kept open until the end so the kernel picks another port */
    }
    if (fd < 0 && n > 0)
        fd = spare[--n];
    while (n > 0)
        close(spare[--n]);
    return fd;
}

static int open_udp(struct ff_fwd *fw, const struct ff_opts *o)
{
    int mq = fw->nq > 1, rc;

    for (uint32_t q = 0; q < fw->nq; q++) {
        if ((rc = ff_udp_open(o->bind_ip, q ? fw->port : o->port, mq)) < 0)
            return rc;
        fw->rx_fds[q] = rc;
        if (q == 0 && (rc = ff_sock_port(rc)) < 0)
            return rc;
        if (q == 0)
            fw->port = (uint16_t)rc;
    }
    if (mq)      /* without it (no CBPF) the kernel's 4-tuple hash still keeps a flow on one socket */
        (void)ff_udp_steer_by_sport(fw->rx_fds[0], fw->nq);
    for (uint32_t q = 0; q < fw->nq; q++) {
        if ((rc = mq ? open_tx(o->bind_ip, q, fw->nq) : dup(fw->rx_fds[0])) < 0)
            return mq ? rc : -errno;
        fw->tx_fds[q] = rc;
    }
    /* UDP_GRO: one skb per peer burst; refused (kernel < 5.0, or a test) -> off everywhere */
    for (uint32_t q = 0; (fw->feat & FF_F_UDP_GRO) && q < fw->nq; q++) {
        if ((rc = ff_refused(fw, FF_F_UDP_GRO) ? -ENOPROTOOPT : ff_udp_set_gro(fw->rx_fds[q], 1)) < 0) {
            while (q-- > 0)
                (void)ff_udp_set_gro(fw->rx_fds[q], 0);
            fall_back(fw, FF_F_UDP_GRO, FF_F_UDP_GRO);
        }
    }
    return 0;
}

static int open_fds(struct ff_fwd *fw, const struct ff_opts *o)
{
    int rc;

    if ((rc = open_tun(fw, o)) < 0 || (rc = open_udp(fw, o)) < 0)
        return rc;
    fw->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fw->wake_fd < 0 ? -errno : 0;
}

int ff_fwd_open(struct ff_fwd **out, const struct ff_opts *o)
{
    struct ff_fwd *fw;
    uint32_t nq = o->workers ? o->workers : 1;
    int rc;

    if (o->batch > FF_MAX_BATCH || nq > FF_MAX_WORKERS || o->tun_prefix > 32)
        return -EINVAL;
#ifndef FF_TEST_HOOKS
    if (o->refuse)
        return -ENOTSUP;     /* fault injection exists in test builds only */
#endif
    if (posix_memalign((void **)&fw, 64, sizeof(*fw)))
        return -ENOMEM;
    memset(fw, 0, sizeof(*fw));
    fw->wake_fd = -1;
    for (uint32_t q = 0; q < FF_MAX_WORKERS; q++)
        fw->tun_fds[q] = fw->rx_fds[q] = fw->tx_fds[q] = -1;
    fw->nq = nq;
    fw->tun_ip = o->tun_ip;
    fw->own_mask = o->tun_prefix ? ~0u << (32 - o->tun_prefix) : 0;
    fw->own_net = o->tun_ip & fw->own_mask;
    fw->flags = o->flags;
    fw->batch = o->batch ? o->batch : FF_DEFAULT_BATCH;
    fw->feat = o->flags & FF_F_OFFLOAD;
    if (!(fw->feat & FF_F_TUN_TSO))
        fw->feat &= ~FF_F_TCP_GRO;       /* merged TUN writes need the vnet header */
#ifdef FF_TEST_HOOKS
    fw->refuse = o->refuse & FF_F_OFFLOAD;
#endif
    fw->vnet = (fw->feat & FF_F_TUN_TSO) != 0;
    fw->duplex = (o->flags & FF_F_DUPLEX) != 0;
    pthread_mutex_init(&fw->wlock, NULL);
    if (posix_memalign((void **)&fw->w, 64, sizeof(*fw->w) * 2 * nq)) {
        free(fw);
        return -ENOMEM;
    }
    memset(fw->w, 0, sizeof(*fw->w) * 2 * nq);
    fw->nw = 2 * nq;
    for (uint32_t i = 0; i < fw->nw; i++) {
        fw->w[i].fw = fw;
        fw->w[i].tun_side = FF_TUN_SIDE(i);
        fw->w[i].q = i / 2;
    }
    rc = ff_table_build(NULL, 0, &fw->table);
    if (rc == 0)
        rc = ff_peers_open(fw);
    if (rc == 0)
        rc = open_fds(fw, o);
    for (uint32_t i = 0; rc == 0 && i < fw->nw; i++) {
        struct ff_worker *w = &fw->w[i];
        w->tun_fd = fw->tun_fds[w->q];
        w->sock_fd = w->tun_side ? fw->tx_fds[w->q] : fw->rx_fds[w->q];
        /* buffers for what open_fds accepted (the TUN's framing, the parts still on) */
        rc = w->tun_side ? ff_tx_alloc(w) : ff_rx_alloc(w);
    }
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
    /* duplex: the thread of w[2q] (tun->udp) also runs w[2q+1] (udp->tun) */
    for (uint32_t i = 0; i < fw->nw && rc == 0; i += fw->duplex ? 2 : 1) {
        rc = -pthread_create(&fw->w[i].thread, NULL, ff_worker_main, &fw->w[i]);
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
    for (uint32_t i = 0; i < fw->nw; i++) {
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
    for (uint32_t q = 0; q < FF_MAX_WORKERS; q++) {
        if (fw->tun_fds[q] >= 0)
            close(fw->tun_fds[q]);
        if (fw->rx_fds[q] >= 0)
            close(fw->rx_fds[q]);
        if (fw->tx_fds[q] >= 0)
            close(fw->tx_fds[q]);
    }
    if (fw->wake_fd >= 0)
        close(fw->wake_fd);
    for (uint32_t i = 0; i < fw->nw; i++) {
        ff_tx_free(&fw->w[i].tx);
        ff_rx_free(&fw->w[i].rx);
    }
    ff_peers_close(fw);
    free(fw->w);
    ff_table_free(fw->table);
    pthread_mutex_destroy(&fw->wlock);
    free(fw);
}
