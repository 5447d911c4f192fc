/* The udp-backend forwarder: a TUN device and a UDP socket joined by two worker pthreads (per
 * TUN queue with workers > 1: see ff_opts.workers and docs/fastpath.md §"Multi-queue tier").
 *
 *   tun->udp: poll, drain up to `batch` packets from the TUN, validate, look up the peer,
 *             TTL-1, sendmmsg; no route -> ICMP net-unreachable written back into the TUN.
 *   udp->tun: recvmmsg a batch, validate, check the sender (anti-spoofing), TTL-1, write to TUN.
 *
 * Wire format is flannel's: one raw inner IPv4 packet per UDP datagram, default port 8285.
 *
 * Route updates: the (single, mutex-serialized) writer publishes a new immutable ff_table with
 * one atomic pointer store; each worker loads it once per batch inside an epoch-marked section;
 * the old table is freed after every worker has left the section it might have been read in.
 */
#ifndef FF_FWD_H
#define FF_FWD_H

#include <stddef.h>
#include <stdint.h>

#include "ff_table.h"

#define FF_DEFAULT_PORT 8285u
#define FF_DEFAULT_BATCH 64u
#define FF_MAX_BATCH 1024u
#define FF_SOCK_BUF_BYTES (7u << 20)   /* 7 MiB, as wireguard-go f26efb6 */

#define FF_MAX_WORKERS 64u          /* TUN queues (the kernel allows MAX_TAP_QUEUES = 256) */

/* Option flags. Each offload part is its own runtime switch (several kernel regressions broke
 * each of them: docs/fastpath.md §"Kill switches and fallbacks") and falls back on its own
 * when the kernel refuses it. */
#define FF_F_ANTI_SPOOF 0x1u
/* Tier 2 parts (the wire format is unchanged: one inner packet per datagram):
 *   TUN_TSO  the TUN gets IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4); superframes read from it are
 *            split in user space (ff_gso_split). Refused -> the TUN is reopened plain.
 *   UDP_GSO  runs of equal-size packets to one peer leave as one UDP_SEGMENT send. EIO -> off
 *            for that socket, the refused train resent one datagram at a time.
 *   UDP_GRO  the receive socket(s) get UDP_GRO (one buffer per peer burst). setsockopt refused
 *            -> off.
 *   TCP_GRO  received TCP segments are merged (ff_gro) into GSO_TCPV4 TUN writes; needs
 *            TUN_TSO. EINVAL on such a write -> FF_GRO_NO_TCP, the item resent as segments. */
#define FF_F_TUN_TSO 0x4u
#define FF_F_UDP_GSO 0x8u
#define FF_F_UDP_GRO 0x10u
#define FF_F_TCP_GRO 0x20u
#define FF_F_OFFLOAD (FF_F_TUN_TSO | FF_F_UDP_GSO | FF_F_UDP_GRO | FF_F_TCP_GRO)
/* One thread per TUN queue runs both directions (tun->udp and udp->tun) instead of one thread
 * each: fewer threads and wake-ups where cores are few (docs/fastpath.md §"Worker wake-ups"). */
#define FF_F_DUPLEX 0x40u

/* Counters (docs/fastpath.md §"Counters"); keep in sync with ff_stat_names. */
enum ff_stat {
    FF_ST_TUN_RX_PACKETS, FF_ST_TUN_RX_BYTES,
    FF_ST_UDP_TX_PACKETS, FF_ST_UDP_TX_BYTES,
    FF_ST_UDP_RX_PACKETS, FF_ST_UDP_RX_BYTES,
    FF_ST_TUN_TX_PACKETS, FF_ST_TUN_TX_BYTES,
    /* packets dropped, one counter per reason: FF_ST_DROP_FIRST..FF_ST_DROP_LAST */
    FF_ST_NO_ROUTE, FF_ST_TTL, FF_ST_SHORT, FF_ST_BAD_HEADER, FF_ST_BAD_LENGTH,
    FF_ST_UNKNOWN_SENDER, FF_ST_SPOOFED, FF_ST_SEND_ERROR, FF_ST_TUN_ERROR, FF_ST_TUN_INVALID,
    FF_ST_DST_SPECIAL, FF_ST_DST_FOREIGN,          /* decap: inner destination not ours */
    FF_ST_ICMP_SENT, FF_ST_TUN_GSO_FRAMES,
    FF_ST_TUN_GRO_MERGED, FF_ST_OFFLOAD_FALLBACKS,
    FF_ST_ICMP_SUPPRESSED,                         /* ICMP errors over the rate limit */
    FF_ST__COUNT,
    FF_ST_DROP_FIRST = FF_ST_NO_ROUTE,
    FF_ST_DROP_LAST = FF_ST_DST_FOREIGN,
};
extern const char *const ff_stat_names[FF_ST__COUNT];

/* Per-peer counters (docs/fastpath.md §"Per-peer counters"): one row per route, kept per worker
 * with plain stores and summed on read. A route keeps its row (its counter index) across table
 * replacements as long as its subnet and peer address stay the same; a freed row is zeroed and
 * reused only once no worker can still count into it. Rows 1..FF_PEER_MAX-1 belong to routes;
 * routes beyond that many are counted in the totals only. Packets are inner packets, bytes their
 * IPv4 total length. Received datagrams are attributed by the sender's address (to the first route
 * of that address, should a host hold several subnets). */
#define FF_PEER_MAX 65536u
enum ff_peer_stat {
    FF_PS_TX_PACKETS, FF_PS_TX_BYTES,   /* sent to the peer (sendmmsg accepted them) */
    FF_PS_TX_DROPPED,                   /* to the peer, refused by the kernel (send_error) */
    FF_PS_RX_PACKETS, FF_PS_RX_BYTES,   /* from the peer's address, accepted */
    FF_PS_RX_SPOOFED,                   /* from the peer's address, inner source not its subnet */
    FF_PS_RX_DST_SPECIAL,               /* from the peer's address, to a special address */
    FF_PS_RX_DST_FOREIGN,               /* from the peer's address, to outside our lease */
    FF_PS_RX_DROPPED,                   /* from the peer's address, dropped for another reason */
    FF_PS_LAST_RX_NS,                   /* CLOCK_MONOTONIC of the last accepted datagram (coarse,
                                         * a few ms); 0 = never. The maximum over workers. */
    FF_PS__COUNT
};
extern const char *const ff_peer_stat_names[FF_PS__COUNT];

struct ff_peer_stats {
    struct ff_route route;
    uint32_t pidx;                      /* 0: the route has no row (beyond FF_PEER_MAX) */
    uint64_t v[FF_PS__COUNT];
};

/* Datagrams dropped as unknown_sender are counted by sender address in a small table per
 * worker (the first FF_UNKNOWN_SENDERS addresses; every later one in a shared "other"), so a
 * flood from sprayed source addresses costs bounded memory and output. */
#define FF_UNKNOWN_SENDERS 16u
struct ff_sender_stats {
    uint32_t ip;                        /* host order */
    uint64_t packets;
};

/* The offload parts in the order of ff_fwd_fallbacks: tun_tso, udp_gso, udp_gro, tcp_gro. */
#define FF_OFFLOAD_NPARTS 4

struct ff_opts {
    const char *tun_name;   /* name or template ("flannel%d"); used when tun_fd < 0 */
    int tun_fd;             /* adopt this TUN fd (dup'ed) when >= 0 */
    uint32_t bind_ip;       /* host order; 0 = any */
    uint16_t port;          /* 0 = ephemeral */
    uint32_t tun_ip;        /* host order; ICMP source; the network address of our lease */
    uint32_t batch;         /* 1..FF_MAX_BATCH, 0 = default */
    uint32_t flags;         /* FF_F_* */
    uint32_t workers;       /* 0 or 1: one TUN queue, one socket (tier 1/2); N > 1: the TUN
                             * has IFF_MULTI_QUEUE with N queues, N SO_REUSEPORT receive
                             * sockets and N send sockets, one worker pair per queue */
    uint32_t refuse;        /* test builds only (FF_TEST_HOOKS; otherwise nonzero is refused
                             * with -ENOTSUP): FF_F_* offload parts whose kernel call is made
                             * to fail once (TUNSETOFFLOAD/setsockopt at open, the first GSO
                             * send or GSO TUN write at run time), to exercise the fallbacks */
    uint8_t tun_prefix;     /* prefix length of our lease tun_ip/tun_prefix, 1..32; 0 = not
                             * given. With FF_F_ANTI_SPOOF a decapsulated packet must be for an
                             * address inside it (else dst_foreign), never for a special one */
};

struct ff_fwd;

/* 0, -EINVAL for bad options, -ENOTSUP for o->refuse outside a test build, or the -errno of
 * the TUN or socket set-up. */
int ff_fwd_open(struct ff_fwd **out, const struct ff_opts *o);
const char *ff_fwd_tun_name(const struct ff_fwd *fw);
uint16_t ff_fwd_port(const struct ff_fwd *fw);
int ff_fwd_start(struct ff_fwd *fw);             /* -EALREADY when running */
int ff_fwd_stop(struct ff_fwd *fw);              /* idempotent */
void ff_fwd_close(struct ff_fwd *fw);            /* stops, frees; fw is invalid afterwards */

/* Route updates (writer side; serialized internally). */
int ff_fwd_replace_routes(struct ff_fwd *fw, const struct ff_route *routes, size_t n);
int ff_fwd_add_route(struct ff_fwd *fw, const struct ff_route *r);
int ff_fwd_remove_route(struct ff_fwd *fw, uint32_t net, uint8_t prefix);  /* -ENOENT if absent */
/* Snapshot the routes: returns the count (copies up to cap), or -errno. */
long ff_fwd_routes(struct ff_fwd *fw, struct ff_route *out, size_t cap);
long ff_fwd_route_count(struct ff_fwd *fw);

/* Sum of the per-worker counters (readable while running). */
void ff_fwd_stats(const struct ff_fwd *fw, uint64_t out[FF_ST__COUNT]);
/* Counters of TUN queue q (both directions); -ERANGE for a bad q. */
int ff_fwd_queue_stats(const struct ff_fwd *fw, uint32_t q, uint64_t out[FF_ST__COUNT]);
uint32_t ff_fwd_workers(const struct ff_fwd *fw);
/* The per-peer counters of every route, in table order: returns the route count (copies up to
 * cap). Takes the writer lock; the cost is one pass over the table and the workers' rows, however
 * much traffic there was. */
long ff_fwd_peer_stats(struct ff_fwd *fw, struct ff_peer_stats *out, size_t cap);
/* Unknown senders merged over the workers: copies up to cap distinct addresses and returns how
 * many; the packets of addresses that did not fit, and of the workers' "other" buckets, are added
 * to *other. */
long ff_fwd_unknown_senders(const struct ff_fwd *fw, struct ff_sender_stats *out, size_t cap,
                            uint64_t *other);
/* Offload fallbacks by part (FF_OFFLOAD_NPARTS, the order above); they sum to the counter
 * offload_fallbacks. */
void ff_fwd_fallbacks(const struct ff_fwd *fw, uint64_t out[FF_OFFLOAD_NPARTS]);
/* The offload parts (FF_F_TUN_TSO...TCP_GRO) active now: requested, accepted at open and not
 * turned off since by a fallback (a part counts as off once any worker turned it off). */
uint32_t ff_fwd_features(const struct ff_fwd *fw);

#endif
