/* The udp-backend forwarder: a TUN device and a UDP socket joined by two worker pthreads.
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

/* Option flags; the offload tier (IFF_VNET_HDR/TSO, UDP_SEGMENT, UDP_GRO, multi-queue) will add
 * bits here, each a runtime switch. */
#define FF_F_ANTI_SPOOF 0x1u
/* Tier 2: the TUN gets IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4); TCP superframes read from it
 * are split in user space (ff_gso_split) and sent with UDP_SEGMENT; the socket receives with
 * UDP_GRO and received TCP segments are merged (ff_gro) into GSO TUN writes. The wire format is
 * unchanged (one inner packet per datagram). */
#define FF_F_OFFLOAD 0x2u

/* Counters; keep in sync with ff_stat_names. */
enum ff_stat {
    FF_ST_TUN_RX_PACKETS, FF_ST_TUN_RX_BYTES,
    FF_ST_UDP_TX_PACKETS, FF_ST_UDP_TX_BYTES,
    FF_ST_UDP_RX_PACKETS, FF_ST_UDP_RX_BYTES,
    FF_ST_TUN_TX_PACKETS, FF_ST_TUN_TX_BYTES,
    FF_ST_NO_ROUTE, FF_ST_TTL, FF_ST_SHORT, FF_ST_BAD_HEADER, FF_ST_BAD_LENGTH,
    FF_ST_UNKNOWN_SENDER, FF_ST_SPOOFED, FF_ST_SEND_ERROR, FF_ST_TUN_ERROR,
    FF_ST_ICMP_SENT, FF_ST_TUN_INVALID, FF_ST_TUN_GSO_FRAMES,
    FF_ST_TUN_GRO_MERGED,
    FF_ST__COUNT
};
extern const char *const ff_stat_names[FF_ST__COUNT];

struct ff_opts {
    const char *tun_name;   /* name or template ("flannel%d"); used when tun_fd < 0 */
    int tun_fd;             /* adopt this TUN fd (dup'ed) when >= 0 */
    uint32_t bind_ip;       /* host order; 0 = any */
    uint16_t port;          /* 0 = ephemeral */
    uint32_t tun_ip;        /* host order; ICMP source */
    uint32_t mtu;           /* TUN MTU; buffers are sized max(mtu, 65535) */
    uint32_t batch;         /* 1..FF_MAX_BATCH, 0 = default */
    uint32_t flags;         /* FF_F_* */
};

struct ff_fwd;

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

/* TUN and socket helpers, exposed for tests. */
/* vnet: IFF_VNET_HDR + offloads (FF_F_OFFLOAD); an adopted fd must already match it. */
int ff_tun_open(const char *name, int vnet, char *actual, size_t actual_len); /* fd or -errno */
int ff_tun_adopt(int fd, int vnet, char *actual, size_t actual_len);          /* fd or -errno */
int ff_udp_open(uint32_t bind_ip, uint16_t port);                      /* fd or -errno */
int ff_sock_port(int fd);                                              /* port or -errno */
int ff_udp_enable_gro(int fd);                                         /* 0 or -errno */

#endif
