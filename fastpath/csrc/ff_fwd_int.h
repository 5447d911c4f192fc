/* Internals shared by the forwarder's translation units (ff_fwd.c: lifecycle and the plain
 * loops; ff_fwd_gso.c: the offload loop). Not part of the public API. */
#ifndef FF_FWD_INT_H
#define FF_FWD_INT_H

#include <linux/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "ff_fwd.h"
#include "ff_offload.h"
#include "ff_pkt.h"

#define FF_BUF_BYTES 65536u          /* one IPv4 packet of any size (the UDP payload limit) */
/* Offload: a TUN superframe is split into at most FF_GSO_MAX_SEGS segments, laid out in one slot
 * of FF_GSO_SLOT_BYTES (payload <= 64 KiB plus <= 120 header bytes per segment). */
#define FF_GSO_MAX_SEGS 128
#define FF_GSO_SEG_HDR_MAX 120u
#define FF_GSO_SLOT_BYTES (FF_BUF_BYTES + FF_GSO_MAX_SEGS * FF_GSO_SEG_HDR_MAX)
#define FF_GSO_BATCH_SEGS 1024       /* segments per offload batch (reading stops before more) */
#define FF_UDP_GSO_SEGS 64           /* UDP_SEGMENT segments per send (UDP_MAX_SEGMENTS < 6.9) */
#define FF_GRO_RX_MSGS 64            /* messages per recvmmsg with UDP_GRO ... */
#define FF_GRO_RX_MAX 4096           /* ... each up to 64 datagrams; also ff_gro's capacity */
#define FF_GRO_CMSG_BYTES 32         /* CMSG_SPACE(sizeof(int)) for the UDP_GRO cmsg, rounded */
#define FF_SEND_RETRIES 8            /* per batch, each waiting FF_POLLOUT_MS for room */
#define FF_TUN_WRITE_RETRIES 3
#define FF_POLLOUT_MS 5
#define FF_ERROR_BACKOFF_NS (10 * 1000 * 1000)
#define FF_IDLE_SPINS 32            /* empty tries (each after a sched_yield) before poll sleeps */

/* Workers: two per TUN queue q, w[2q] tun->udp and w[2q+1] udp->tun. */
#define FF_TUN_SIDE(i) (((i) & 1u) == 0)

/* A batch of packets: buffers, lengths and the mmsghdr/iovec/sockaddr arrays, allocated once.
 * The offload tier will add per-packet virtio headers and segment lists here. */
struct ff_batch {
    uint32_t cap;
    size_t slot;                 /* bytes per packet slot: FF_BUF_BYTES, or FF_GSO_SLOT_BYTES */
    uint8_t *mem;                /* cap * slot */
    uint32_t *lens;              /* 0 = dropped */
    struct mmsghdr *msgs;
    struct iovec *iovs;
    struct sockaddr_in *addrs;
};

/* Offload-only arrays (tun->udp with FF_F_OFFLOAD): segments of split superframes and the
 * UDP_SEGMENT send groups planned over them. */
struct ff_gso_batch {
    uint8_t *frame;              /* vnet hdr + one TUN read */
    uint8_t **segp;              /* FF_GSO_BATCH_SEGS segment pointers into ff_batch.mem */
    uint16_t *seg_lens;
    uint64_t *peer;              /* ff_peer_key of each kept segment */
    uint32_t *len;
    struct iovec *iov;
    struct ff_gso_group *groups;
    struct mmsghdr *msgs;        /* one per group */
    struct sockaddr_in *addrs;
    uint8_t *cmsg;               /* FF_UDP_GSO_CMSG_SPACE per group */
    int gso_off;                 /* UDP_SEGMENT failed with EIO once: send segments singly */
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
    int tcp_gro_off;             /* a GSO TUN write was refused: FF_GRO_NO_TCP from then on */
    uint8_t *reseg;              /* TCP_GRO fallback: linearized item + its segments */
    uint64_t epoch __attribute__((aligned(64)));   /* odd while the table may be in use */
    uint64_t stats[FF_ST__COUNT];
    struct ff_batch b;
    struct ff_gso_batch g;
    /* udp->tun with FF_F_OFFLOAD: UDP_GRO receive, userspace GRO before the TUN */
    struct ff_gro *gro;
    uint8_t **rx_p;              /* accepted inner packets of a batch (FF_GRO_RX_MAX) */
    uint32_t *rx_len;
    uint8_t *rx_cmsg;            /* FF_GRO_CMSG_BYTES per message */
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
    uint32_t feat;               /* FF_F_* offload parts accepted at open */
    uint32_t refuse;             /* tests: FF_F_* parts to refuse once at run time (atomic) */
    int vnet;                    /* TUN has IFF_VNET_HDR: every read/write carries one */
    char tun_name[IFNAMSIZ];
};

/* Tests only (ff_opts.refuse): 1 once if the kernel call for `part` is to be made to fail. */
static inline int ff_refused(struct ff_fwd *fw, uint32_t part)
{
    return (__atomic_load_n(&fw->refuse, __ATOMIC_RELAXED) & part) &&
           (__atomic_fetch_and(&fw->refuse, ~part, __ATOMIC_RELAXED) & part);
}

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


static inline uint8_t *pkt_buf(struct ff_batch *b, uint32_t i)
{
    return b->mem + (size_t)i * b->slot;
}

/* Shared by both tun->udp loops (ff_fwd.c). */
int ff_tun_write(struct ff_worker *w, const uint8_t *p, uint32_t len, int retries);
int ff_tun_writev(struct ff_worker *w, const struct iovec *iov, int niov, size_t want, int retries);
void ff_send_msgs(struct ff_worker *w, struct mmsghdr *msgs, uint32_t m,
                  const struct ff_gso_group *groups);
/* Look up (with a per-batch memo), decrement TTL, send ICMP for no route; NULL = dropped. */
struct ff_memo {
    const struct ff_table *t;
    const struct ff_slot *slot;
    uint32_t dst;
    int valid;
};
const struct ff_slot *ff_route_packet(struct ff_worker *w, struct ff_memo *memo, uint8_t *p,
                                      uint32_t len);
void ff_wait_out(int fd);
void *ff_worker_main(void *arg);     /* pthread entry; arg is the struct ff_worker */
uint32_t ff_tun_to_udp_batch_gso(struct ff_worker *w);
/* udp->tun with FF_F_OFFLOAD: receive (UDP_GRO trains are cut back into datagrams), check each
 * datagram, coalesce with ff_gro, write each item as one TUN frame. */
uint32_t ff_udp_to_tun_batch_gro(struct ff_worker *w);
void ff_send_singly(struct ff_worker *w, const struct msghdr *train, uint32_t count);
int ff_gro_rx_alloc(struct ff_worker *w);
void ff_gro_rx_free(struct ff_worker *w);
uint32_t ff_udp_accept(struct ff_worker *w, const struct ff_table *t, uint8_t *p, uint32_t len,
                       uint32_t sender, int trunc);
int ff_gso_batch_alloc(struct ff_gso_batch *g);
void ff_gso_batch_free(struct ff_gso_batch *g);

#endif
