/* Internals shared by the forwarder's translation units: ff_fwd.c (lifecycle, publication),
 * ff_io.c (TUN and sockets), ff_loop.c (the worker thread), ff_tx.c (tun->udp), ff_rx.c
 * (udp->tun). Not part of the public API. */
#ifndef FF_FWD_INT_H
#define FF_FWD_INT_H

#include <linux/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "ff_fwd.h"
#include "ff_offload.h"
#include "ff_pkt.h"

#define FF_BUF_BYTES 65536u          /* one IPv4 packet of any size (the UDP payload limit) */
/* A TUN superframe is split into at most FF_GSO_MAX_SEGS segments, laid out in one slot of
 * FF_GSO_SLOT_BYTES (payload <= 64 KiB plus <= 120 header bytes per segment). */
#define FF_GSO_MAX_SEGS 128
#define FF_GSO_SEG_HDR_MAX 120u
#define FF_GSO_SLOT_BYTES (FF_BUF_BYTES + FF_GSO_MAX_SEGS * FF_GSO_SEG_HDR_MAX)
#define FF_GSO_BATCH_SEGS 1024       /* segments per tun->udp batch (reading stops before more) */
#define FF_GRO_RX_MSGS 64            /* messages per recvmmsg with UDP_GRO ... */
#define FF_GRO_RX_MAX 4096           /* ... each up to 64 datagrams; also ff_gro's capacity */
#define FF_GRO_CMSG_BYTES 32         /* CMSG_SPACE(sizeof(int)) for the UDP_GRO cmsg, rounded */
#define FF_SEND_RETRIES 8            /* per batch, each waiting FF_POLLOUT_MS for room */
#define FF_TUN_WRITE_RETRIES 3
#define FF_POLLOUT_MS 5
#define FF_ERROR_BACKOFF_NS (10 * 1000 * 1000)
#define FF_IDLE_SPINS 32            /* empty tries (each after a sched_yield) before poll sleeps */
#define FF_ICMP_INTERVAL_NS (10 * 1000 * 1000)  /* ICMP errors per forwarder: 100 per second ... */
#define FF_ICMP_BURST 20                         /* ... in bursts of up to 20 */

/* Workers: two per TUN queue q, w[2q] tun->udp and w[2q+1] udp->tun. */
#define FF_TUN_SIDE(i) (((i) & 1u) == 0)

/* What the per-packet checks decided: forward the packet, or why it is dropped. Each drop
 * reason is counted under its own counter (ff_count_drop). */
enum ff_verdict {
    FF_FORWARD = 0,
    FF_DROP_SHORT, FF_DROP_BAD_HEADER, FF_DROP_BAD_LENGTH,   /* a datagram, not IPv4 */
    FF_DROP_UNKNOWN_SENDER, FF_DROP_SPOOFED,                 /* anti-spoofing */
    FF_DROP_TTL,                                             /* TTL would reach 0 */
    FF_DROP_TUN_INVALID,                                     /* read from the TUN, not IPv4 */
    FF_DROP_NO_ROUTE,                                        /* no peer for the destination */
    FF_DROP_DST_SPECIAL, FF_DROP_DST_FOREIGN,                /* decap: not for our subnet */
};

/* tun->udp worker (ff_tx.c). One read per frame: a plain TUN reads a packet straight into its
 * slot; a vnet TUN reads header + frame into `frame` and splits it into the slot (a TSO
 * superframe into segments). The kept segments of a batch are grouped by peer into
 * UDP_SEGMENT trains (one message each, groups of one when UDP_GSO is off). */
struct ff_tx {
    uint8_t *mem;                /* batch slots */
    size_t slot;                 /* bytes per slot: FF_BUF_BYTES, or FF_GSO_SLOT_BYTES (vnet) */
    uint8_t *frame;              /* vnet TUN: vnet hdr + one read */
    uint8_t **segp;              /* FF_GSO_BATCH_SEGS segment pointers into mem */
    uint16_t *seg_lens;
    uint64_t *peer;              /* ff_tx_key of each kept segment: peer ip:port, counter index */
    uint32_t *len;
    struct iovec *iov;
    struct ff_gso_group *groups;
    struct mmsghdr *msgs;        /* one per group */
    struct sockaddr_in *addrs;
    uint8_t *cmsg;               /* FF_UDP_GSO_CMSG_SPACE per group */
    int gso_off;                 /* UDP_GSO off (never on, or EIO once): one datagram per send */
    /* a superframe of more than FF_GSO_MAX_SEGS segments (a small MSS), kept in `frame` and
     * split in chunks once the batch before it has left */
    struct virtio_net_hdr pend_h;
    size_t pend_len;
    unsigned pend_next, pend_total;
};

/* udp->tun worker (ff_rx.c): recvmmsg into per-message buffers (a UDP_GRO train per message
 * with UDP_GRO), check every datagram, coalesce the accepted ones with ff_gro (TCP_GRO) and
 * write each item as one TUN frame. */
struct ff_rx {
    uint32_t vlen;               /* messages per recvmmsg */
    uint8_t *mem;                /* vlen * FF_BUF_BYTES */
    struct mmsghdr *msgs;
    struct iovec *iovs;
    struct sockaddr_in *addrs;
    uint8_t *cmsg;               /* FF_GRO_CMSG_BYTES per message */
    struct ff_gro *gro;
    uint8_t **pkt;               /* accepted inner packets of a batch (FF_GRO_RX_MAX) */
    uint32_t *pkt_len;
    uint8_t *reseg;              /* TCP_GRO fallback: linearized item + its segments */
    int tcp_gro_off;             /* a GSO TUN write was refused: FF_GRO_NO_TCP from then on */
};

/* ---- per-peer counters (ff_peers.c; docs/fastpath.md §"Per-peer counters") ------------------
 * Each worker has its own rows, in chunks of FF_PEER_CHUNK rows that never move once allocated
 * (the writer adds chunks before it publishes a table using their indices), so a worker finds
 * row pidx with two loads and counts with plain stores. */
#define FF_PEER_CHUNK_SHIFT 8
#define FF_PEER_CHUNK (1u << FF_PEER_CHUNK_SHIFT)              /* rows per chunk: 32 KiB */
#define FF_PEER_CHUNKS (FF_PEER_MAX >> FF_PEER_CHUNK_SHIFT)
#define FF_PIDX_SHIFT 48             /* ff_tx_key: the counter index above the peer's ip:port */

struct ff_peer_row {
    uint64_t v[FF_PS__COUNT];
} __attribute__((aligned(64)));
/* FF_PS__COUNT = 10 counters: two cache lines (rows are per worker: never shared) */
_Static_assert(sizeof(struct ff_peer_row) == 128, "a row is two cache lines");
_Static_assert(FF_PEER_MAX <= 1u << (64 - FF_PIDX_SHIFT), "the index must fit in ff_tx_key");

/* The first FF_UNKNOWN_SENDERS addresses dropped as unknown_sender (an entry's ip, once set,
 * never changes), then "other". Written by the worker only. */
struct ff_unknown {
    uint32_t ip[FF_UNKNOWN_SENDERS];
    uint64_t packets[FF_UNKNOWN_SENDERS];
    uint64_t other;
};

/* What one received message contributed, by verdict (committed once per message). */
struct ff_rx_tally {
    uint64_t packets, bytes, spoofed, dst_special, dst_foreign, dropped, unknown;
};

/* Per-worker context: counters and the reclamation epoch are written only by this worker. */
struct ff_worker {
    struct ff_fwd *fw;
    pthread_t thread;
    int started;
    int tun_side;                /* tun->udp (else udp->tun) */
    uint32_t q;                  /* TUN queue */
    int tun_fd;                  /* TUN queue q: read (tun side) or written (udp side) */
    int sock_fd;                 /* tun side: the send socket; udp side: the receive socket */
    uint64_t epoch __attribute__((aligned(64)));   /* odd while the table may be in use */
    uint64_t busy;               /* odd while a tun->udp batch holds counter indices, from its
                                  * table read to its last send (ff_peers_enter/leave) */
    uint64_t stats[FF_ST__COUNT];
    uint64_t fallbacks[FF_OFFLOAD_NPARTS];   /* offload_fallbacks by part */
    uint64_t now_ns;             /* udp->tun: coarse CLOCK_MONOTONIC of this batch */
    struct ff_peer_row *pdir[FF_PEER_CHUNKS];  /* this worker's per-peer rows; NULL = not yet */
    struct ff_unknown unk;       /* udp->tun only */
    struct ff_tx tx;             /* tun side only */
    struct ff_rx rx;             /* udp side only */
    uint8_t icmp[FF_ICMP_MAX_LEN];
} __attribute__((aligned(64)));

struct ff_fwd {
    struct ff_worker *w;         /* nw = 2 * nq workers, 64-byte aligned */
    uint32_t nw, nq;
    struct ff_table *table;      /* published pointer: atomic store by writer, load by workers */
    pthread_mutex_t wlock;       /* serializes writers */
    int tun_fds[FF_MAX_WORKERS]; /* one per TUN queue */
    int rx_fds[FF_MAX_WORKERS];  /* receive sockets (one; or a SO_REUSEPORT group of nq) */
    int tx_fds[FF_MAX_WORKERS];  /* send sockets; nq == 1: the receive socket itself */
    int wake_fd;
    int stop;                    /* atomic flag */
    int running;
    uint16_t port;
    uint32_t tun_ip, batch, flags;
    uint32_t own_net, own_mask;  /* our lease (mask 0: not given), host order */
    uint64_t icmp_tat;           /* ICMP rate limit (ff_ratelimit_take), shared by the workers */
    uint32_t feat;               /* FF_F_* offload parts accepted at open */
#ifdef FF_TEST_HOOKS
    uint32_t refuse;             /* FF_F_* parts to refuse once (atomic) */
#endif
    int vnet;                    /* TUN has IFF_VNET_HDR: every read/write carries one */
    int duplex;                  /* one thread per queue runs both its workers (FF_F_DUPLEX) */
    char tun_name[IFNAMSIZ];
    /* counter indices in use (bit 0, the shared row of routes without one, always); writer only */
    uint64_t peer_used[FF_PEER_MAX / 64];
    uint32_t peer_hint;          /* no free index below word peer_hint */
    uint32_t peer_chunks;        /* chunks allocated in every worker's pdir */
};

/* Fault injection for the fallback tests (ff_opts.refuse), compiled into test builds only:
 * true once if the kernel call for offload `part` is to be made to fail. */
#ifdef FF_TEST_HOOKS
static inline bool ff_refused(struct ff_fwd *fw, uint32_t part)
{
    return (__atomic_load_n(&fw->refuse, __ATOMIC_RELAXED) & part) &&
           (__atomic_fetch_and(&fw->refuse, ~part, __ATOMIC_RELAXED) & part);
}
#else
static inline bool ff_refused(struct ff_fwd *fw, uint32_t part)
{
    (void)fw;
    (void)part;
    return false;
}
#endif

#define STAT_ADD(w, i, n) \
    __atomic_store_n(&(w)->stats[i], (w)->stats[i] + (uint64_t)(n), __ATOMIC_RELAXED)

/* ---- reclamation ----------------------------------------------------------------------------
 * Dekker-style pairing: the worker marks itself inside (odd epoch) and then reads the pointer;
 * the writer stores the new pointer and then reads the epochs; a full fence on each side means
 * that either the worker sees the new table or the writer sees the worker inside and waits for
 * its epoch to move on. */
static inline const struct ff_table *read_lock(struct ff_worker *w)
{
    __atomic_store_n(&w->epoch, w->epoch + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(&w->fw->table, __ATOMIC_ACQUIRE);
}

static inline void read_unlock(struct ff_worker *w)
{
    __atomic_store_n(&w->epoch, w->epoch + 1, __ATOMIC_RELEASE);
}

/* ---- per-peer counters: the worker's side ------------------------------------------------- */
static inline uint64_t *ff_peer_ctrs(struct ff_worker *w, uint32_t pidx)
{
    return w->pdir[pidx >> FF_PEER_CHUNK_SHIFT][pidx & (FF_PEER_CHUNK - 1)].v;
}

#define PEER_ADD(c, i, n) __atomic_store_n(&(c)[i], (c)[i] + (uint64_t)(n), __ATOMIC_RELAXED)

/* The UDP_GSO planning key of a kept segment (ff_udp_gso_plan groups equal keys): the peer's
 * ip:port, and above it the route's counter index, so a train is one route's. */
static inline uint64_t ff_tx_key(const struct ff_slot *s)
{
    return ff_peer_key(s->peer_ip, s->peer_port) | (uint64_t)s->pidx << FF_PIDX_SHIFT;
}

static inline uint32_t ff_tx_key_pidx(uint64_t key)
{
    return (uint32_t)(key >> FF_PIDX_SHIFT);
}

/* A tun->udp batch uses counter indices from its table read until its last send, past
 * read_unlock: `busy` tells the writer (ff_peers_release) when an index it freed is out of use.
 * Enter before read_lock, whose fence orders the store before the table load. */
static inline void ff_peers_enter(struct ff_worker *w)
{
    __atomic_store_n(&w->busy, w->busy + 1, __ATOMIC_RELAXED);
}

static inline void ff_peers_leave(struct ff_worker *w)
{
    __atomic_store_n(&w->busy, w->busy + 1, __ATOMIC_RELEASE);
}

static inline void ff_rx_tally(struct ff_rx_tally *t, enum ff_verdict v, const uint8_t *p)
{
    if (v == FF_FORWARD) {
        t->packets++;
        t->bytes += ff_ip4_tot_len(p);
    } else if (v == FF_DROP_SPOOFED) {
        t->spoofed++;
    } else if (v == FF_DROP_DST_SPECIAL) {
        t->dst_special++;
    } else if (v == FF_DROP_DST_FOREIGN) {
        t->dst_foreign++;
    } else if (v == FF_DROP_UNKNOWN_SENDER) {
        t->unknown++;
    } else {
        t->dropped++;
    }
}

/* ff_peers.c */
int ff_peers_open(struct ff_fwd *fw);               /* index 0 and the first chunk; -ENOMEM */
void ff_peers_close(struct ff_fwd *fw);
/* Writer, under wlock, before publishing nt in place of old: give every route of nt its counter
 * index (old's when net/prefix and peer address are unchanged, else a free one) and rebuild
 * nt's peer set (ff_table_finalize). 0 or -ENOMEM. */
int ff_peers_assign(struct ff_fwd *fw, struct ff_table *nt, const struct ff_table *old);
/* Writer, under wlock, after nt replaced old and the readers left old: free the indices of old
 * that nt does not use, once no tun->udp batch can still count into them. */
void ff_peers_release(struct ff_fwd *fw, const struct ff_table *old, const struct ff_table *nt);
/* udp->tun: commit one message's tally for its sender (t: the batch's table). */
void ff_peers_count_rx(struct ff_worker *w, const struct ff_table *t, uint32_t sender,
                       const struct ff_rx_tally *tl);
/* An offload part (one FF_F_* bit) fell back: offload_fallbacks and its part's count. */
void ff_count_fallback(struct ff_worker *w, uint32_t part);
uint64_t ff_coarse_now_ns(void);

/* ff_loop.c: the worker thread and what both directions share */
void *ff_worker_main(void *arg);     /* pthread entry; arg is the struct ff_worker */
void ff_count_drop(struct ff_worker *w, enum ff_verdict v);
void ff_wait_out(int fd);
/* Write one frame (iov, want bytes) into the TUN; EAGAIN waits for room up to `retries`
 * times. 0 or -errno; the caller counts. */
int ff_tun_writev(struct ff_worker *w, const struct iovec *iov, int niov, size_t want, int retries);
/* One complete packet, behind an all-zero virtio_net_hdr on a vnet TUN. */
int ff_tun_write(struct ff_worker *w, const uint8_t *p, uint32_t len, int retries);

/* ff_tx.c: tun->udp */
int ff_tx_alloc(struct ff_worker *w);
void ff_tx_free(struct ff_tx *tx);
uint32_t ff_tx_batch(struct ff_worker *w);          /* frames read; 0 = the TUN is drained */

/* ff_rx.c: udp->tun */
/* Check one decapsulated datagram p[0..len) from sender (host order) against table t and the
 * forwarder's options; on FF_FORWARD its TTL was decremented. */
enum ff_verdict ff_rx_accept(const struct ff_fwd *fw, const struct ff_table *t, uint8_t *p,
                             size_t len, uint32_t sender);
int ff_rx_alloc(struct ff_worker *w);
void ff_rx_free(struct ff_rx *rx);
uint32_t ff_rx_batch(struct ff_worker *w);          /* messages received; 0 = none */

/* ff_io.c: TUN and socket set-up. vnet: IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4); an adopted
 * fd must already have the vnet header. mq: IFF_MULTI_QUEUE (every queue is opened by the same
 * name). Each returns an fd (or 0) or -errno. */
int ff_tun_open(const char *name, int vnet, int mq, char *actual, size_t actual_len);
int ff_tun_adopt(int fd, int vnet, int mq, char *actual, size_t actual_len);
/* reuseport: SO_REUSEPORT before bind (the multi-queue receive group). */
int ff_udp_open(uint32_t bind_ip, uint16_t port, int reuseport);
/* Spread a SO_REUSEPORT group of n sockets by the sender's UDP source port (sport % n), so the
 * per-worker source ports of a multi-queue peer land on distinct sockets. */
int ff_udp_steer_by_sport(int fd, uint32_t n);
int ff_sock_port(int fd);
int ff_udp_set_gro(int fd, int on);

#endif
