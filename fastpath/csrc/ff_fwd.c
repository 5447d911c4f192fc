/* Forwarder lifecycle, route publication (epoch-based reclamation), counters. The packet loops
 * are in ff_loop.c (tier 1) and ff_fwd_gso.c (offload). */
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
