/* The worker thread (one per direction and TUN queue: poll, drain, a short spin) and what both
 * directions share: counting drops, waiting for room, TUN writes. The batches themselves are
 * ff_tx.c (tun->udp) and ff_rx.c (udp->tun), one loop per direction for every tier. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "ff_fwd_int.h"

static const uint8_t verdict_stat[] = {
    [FF_DROP_SHORT] = FF_ST_SHORT,
    [FF_DROP_BAD_HEADER] = FF_ST_BAD_HEADER,
    [FF_DROP_BAD_LENGTH] = FF_ST_BAD_LENGTH,
    [FF_DROP_UNKNOWN_SENDER] = FF_ST_UNKNOWN_SENDER,
    [FF_DROP_SPOOFED] = FF_ST_SPOOFED,
    [FF_DROP_TTL] = FF_ST_TTL,
    [FF_DROP_TUN_INVALID] = FF_ST_TUN_INVALID,
    [FF_DROP_NO_ROUTE] = FF_ST_NO_ROUTE,
    [FF_DROP_DST_SPECIAL] = FF_ST_DST_SPECIAL,
    [FF_DROP_DST_FOREIGN] = FF_ST_DST_FOREIGN,
};

void ff_count_drop(struct ff_worker *w, enum ff_verdict v)
{
    if (v != FF_FORWARD)
        STAT_ADD(w, verdict_stat[v], 1);
}

static inline int stopping(struct ff_fwd *fw)
{
    return __atomic_load_n(&fw->stop, __ATOMIC_ACQUIRE);
}

void ff_wait_out(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};

    (void)poll(&p, 1, FF_POLLOUT_MS);
}

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

int ff_tun_write(struct ff_worker *w, const uint8_t *p, uint32_t len, int retries)
{
    static const uint8_t zero_hdr[FF_VNET_HDR_LEN];   /* GSO_NONE, checksums complete */
    struct iovec iov[2] = {{(void *)zero_hdr, FF_VNET_HDR_LEN}, {(void *)p, len}};
    int vnet = w->fw->vnet;

    return ff_tun_writev(w, vnet ? iov : iov + 1, vnet ? 2 : 1,
                         len + (vnet ? FF_VNET_HDR_LEN : 0), retries);
}

/* A queue's two workers served by one thread: w is the tun->udp worker, w + 1 its udp->tun
 * peer. Each batch call uses its own worker's state (epoch, counters, buffers). */
static uint32_t batch_once(struct ff_worker *w, int pair)
{
    if (pair)
        return ff_tx_batch(w) + ff_rx_batch(w + 1);
    return w->tun_side ? ff_tx_batch(w) : ff_rx_batch(w);
}

/* Drain until EAGAIN (flannel's "optimistic reads"), then stay awake a little: up to
 * FF_IDLE_SPINS more tries, each after a sched_yield (which hands the core to any runnable
 * thread, e.g. the TCP endpoints, and returns at once when there is none). Sleeping in poll
 * after every drain cost a wakeup (on a VM, a halt/IPI round trip) per burst: docs/fastpath.md
 * §"Worker wake-ups". Returns the units handled. */
static uint32_t drain(struct ff_worker *w, int pair)
{
    uint32_t n = 0, got;

    for (int idle = 0; !stopping(w->fw);) {
        if ((got = batch_once(w, pair)) > 0) {
            n += got;
            idle = 0;
        } else if (idle++ < FF_IDLE_SPINS) {
            sched_yield();
        } else {
            break;
        }
    }
    return n;
}

void *ff_worker_main(void *arg)
{
    struct ff_worker *w = arg;
    struct ff_fwd *fw = w->fw;
    int pair = fw->duplex;       /* one thread for both directions of this queue */
    struct pollfd pfd[3] = {
        {.fd = fw->wake_fd, .events = POLLIN},
        {.fd = w->tun_side ? w->tun_fd : w->sock_fd, .events = POLLIN},
        {.fd = pair ? (w + 1)->sock_fd : -1, .events = POLLIN},   /* -1: ignored by poll */
    };
    struct timespec backoff = {0, FF_ERROR_BACKOFF_NS};
    char name[16];               /* the kernel's limit: 15 characters and the NUL */

    /* "ff-tx<q>" / "ff-rx<q>": what top, perf and /proc/<pid>/task/<tid>/comm show, so a
     * profile tells the workers apart (docs/fastpath.md §"Worker wake-ups") */
    snprintf(name, sizeof(name), "ff-%s%u", pair ? "io" : w->tun_side ? "tx" : "rx", (unsigned)w->q);
    (void)pthread_setname_np(pthread_self(), name);
    while (!stopping(fw)) {
        if (poll(pfd, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[0].revents)
            break;
        /* a persistent error condition (e.g. a detached TUN) keeps poll returning at once with
         * nothing to read: back off instead of spinning on a core */
        if (drain(w, pair) == 0 &&
            ((pfd[1].revents | pfd[2].revents) & (POLLERR | POLLHUP | POLLNVAL)))
            nanosleep(&backoff, NULL);
    }
    return NULL;
}
