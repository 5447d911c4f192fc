/* Per-peer counters of the forwarder against the real kernel, in a private network namespace:
 *   - tun->udp: datagrams a kernel socket sends into the TUN count for the route they take,
 *     packets and bytes exactly (plain, with UDP_GSO trains, with two workers);
 *   - udp->tun: accepted, spoofed, special- or foreign-destination and malformed datagrams
 *     count for the sender's route;
 *     unknown senders by address, bounded (FF_UNKNOWN_SENDERS, then "other");
 *   - indices: a route keeps its index and counts across replace/add/remove; a freed index is
 *     reused only after the update that freed it, with zeroed counts; a changed peer address is
 *     a new index; counts stay exact while tables are replaced under traffic; the writer waits
 *     for a tun->udp batch that may still count into a freed index.
 * Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for unshare); exits 77 (skipped) without. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ff_check.h"
#include "ff_csum.h"
#include "ff_fwd.h"
#include "ff_fwd_int.h"          /* the workers' busy counter, for the quiescence check */

#define LO(x) (0x7f000000u | (x))       /* 127.0.0.x */
#define TUN_ME 0x0a630001u              /* 10.99.0.1/8 on the TUN: 10/8 goes through it */
#define NET_A 0x0a620000u               /* 10.98/16 -> 127.0.0.1 (the test's peer socket) */
#define NET_B 0x0a610000u               /* 10.97/16 -> 127.0.0.2 */
#define NET_C 0x0a600000u               /* 10.96/16 -> 127.0.0.3 */
#define NET_D 0x0a5f0000u
#define NET_E 0x0a5e0000u
#define NET_F 0x0a5d0000u

static void ip4(uint8_t *p, size_t total, uint32_t src, uint32_t dst)
{
    uint16_t c;
    memset(p, 0, total);
    p[0] = 0x45;
    ff_st16(p + 2, (uint16_t)total);
    p[8] = 64;
    p[9] = 17;
    ff_st32(p + 12, src);
    ff_st32(p + 16, dst);
    c = ff_ck(p, 20);
    ff_st16(p + 10, c);
}

static int udp_sock(uint32_t ip, uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(ip)};
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(s >= 0 && bind(s, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    return s;
}

static uint16_t sock_port(int s)
{
    struct sockaddr_in sa;
    socklen_t l = sizeof(sa);
    CHECK(getsockname(s, (struct sockaddr *)&sa, &l) == 0);
    return ntohs(sa.sin_port);
}

static void send_to(int s, uint32_t ip, uint16_t port, const void *p, size_t len)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(ip)};
    CHECK_EQ(sendto(s, p, len, 0, (struct sockaddr *)&sa, sizeof(sa)), (ssize_t)len);
}

static int tun_up(const char *name)
{
    struct ifreq ifr = {0};
    struct sockaddr_in *sa = (struct sockaddr_in *)&ifr.ifr_addr;
    int s = socket(AF_INET, SOCK_DGRAM, 0), ok = 1;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(TUN_ME);
    ok &= ioctl(s, SIOCSIFADDR, &ifr) == 0;
    sa->sin_addr.s_addr = htonl(0xff000000u);
    ok &= ioctl(s, SIOCSIFNETMASK, &ifr) == 0;
    ifr.ifr_flags = IFF_UP | IFF_RUNNING;
    ok &= ioctl(s, SIOCSIFFLAGS, &ifr) == 0;
    close(s);
    return ok;
}

static int setup_netns(void)
{
    struct ifreq lo = {.ifr_name = "lo", .ifr_flags = IFF_UP | IFF_RUNNING};
    int s;
    if (unshare(CLONE_NEWNET) < 0)
        return -errno;
    s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0 || ioctl(s, SIOCSIFFLAGS, &lo) < 0)
        return -errno;
    close(s);
    return 0;
}

/* The per-peer counters of route net/16; CHECKs that it is there. */
static struct ff_peer_stats peer(struct ff_fwd *fw, uint32_t net)
{
    static struct ff_peer_stats ps[64];
    struct ff_peer_stats none = {0};
    long n = ff_fwd_peer_stats(fw, ps, 64);
    for (long i = 0; i < n && i < 64; i++)
        if (ps[i].route.net == net && ps[i].route.prefix == 16)
            return ps[i];
    CHECK(!"route present");
    return none;
}

/* Wait (bounded: 3 s) until route net's counter k reaches want; returns its value. */
static uint64_t wait_peer(struct ff_fwd *fw, uint32_t net, int k, uint64_t want)
{
    struct timespec ts = {0, 5 * 1000 * 1000};
    uint64_t v = 0;
    for (int i = 0; i < 600 && (v = peer(fw, net).v[k]) < want; i++)
        nanosleep(&ts, NULL);
    return v;
}

static void add(struct ff_fwd *fw, uint32_t net, uint32_t ip, uint16_t port)
{
    struct ff_route r = {net, 16, ip, port};
    CHECK_EQ(ff_fwd_add_route(fw, &r), 0);
}

/* tun->udp: n datagrams of `payload` bytes from a kernel socket to 10.98.0.5 leave for route A,
 * arrive at the peer socket, and count as n inner packets of payload + 28 bytes. */
static void check_tx(struct ff_fwd *fw, int peer_sock, int n, size_t payload)
{
    static uint8_t buf[2048];
    int ks = udp_sock(TUN_ME, 0), got = 0;
    uint64_t p0 = peer(fw, NET_A).v[FF_PS_TX_PACKETS], b0 = peer(fw, NET_A).v[FF_PS_TX_BYTES];
    memset(buf, 0x5a, sizeof(buf));
    for (int i = 0; i < n; i++)
        send_to(ks, NET_A | 5, 9, buf, payload);
    while (got < n) {
        struct pollfd pfd = {peer_sock, POLLIN, 0};
        if (poll(&pfd, 1, 2000) != 1)
            break;
        CHECK_EQ(recv(peer_sock, buf, sizeof(buf), 0), (ssize_t)(payload + 28));
        got++;
    }
    CHECK_EQ(got, n);
    CHECK_EQ(wait_peer(fw, NET_A, FF_PS_TX_PACKETS, p0 + (uint64_t)n), p0 + (uint64_t)n);
    CHECK_EQ(peer(fw, NET_A).v[FF_PS_TX_BYTES], b0 + (uint64_t)n * (payload + 28));
    CHECK_EQ(peer(fw, NET_B).v[FF_PS_TX_PACKETS], 0);
    close(ks);
}

/* udp->tun from route A's address: accepted, spoofed, to a special address (a metadata
 * service's), to outside our lease (10.99.0.1/8), short. */
static void check_rx(struct ff_fwd *fw, int peer_sock, uint16_t port)
{
    uint8_t p[60];
    struct ff_peer_stats a;
    ip4(p, 60, NET_A | 7, TUN_ME);
    for (int i = 0; i < 30; i++)
        send_to(peer_sock, LO(1), port, p, 60);
    ip4(p, 60, 0x0a320001u, TUN_ME);                 /* inner source in nobody's subnet */
    for (int i = 0; i < 5; i++)
        send_to(peer_sock, LO(1), port, p, 60);
    ip4(p, 60, NET_A | 7, 0xa9fea9feu);             /* 169.254.169.254 */
    for (int i = 0; i < 4; i++)
        send_to(peer_sock, LO(1), port, p, 60);
    ip4(p, 60, NET_A | 7, 0xc0a80707u);             /* 192.168.7.7 */
    for (int i = 0; i < 2; i++)
        send_to(peer_sock, LO(1), port, p, 60);
    for (int i = 0; i < 3; i++)
        send_to(peer_sock, LO(1), port, p, 10);      /* short */
    CHECK_EQ(wait_peer(fw, NET_A, FF_PS_RX_DROPPED, 3), 3);
    a = peer(fw, NET_A);
    CHECK_EQ(a.v[FF_PS_RX_PACKETS], 30);
    CHECK_EQ(a.v[FF_PS_RX_BYTES], 30 * 60);
    CHECK_EQ(a.v[FF_PS_RX_SPOOFED], 5);
    CHECK_EQ(a.v[FF_PS_RX_DST_SPECIAL], 4);
    CHECK_EQ(a.v[FF_PS_RX_DST_FOREIGN], 2);
    CHECK(a.v[FF_PS_LAST_RX_NS] > 0 && a.v[FF_PS_LAST_RX_NS] <= ff_coarse_now_ns());
    CHECK_EQ(peer(fw, NET_B).v[FF_PS_RX_PACKETS], 0);
}

/* 40 unknown addresses, 2 datagrams each: at most 16 addresses listed, nothing lost. */
static void check_unknown(struct ff_fwd *fw, uint16_t port)
{
    struct ff_sender_stats out[FF_UNKNOWN_SENDERS];
    uint64_t other = 0, total = 0;
    struct timespec ts = {0, 5 * 1000 * 1000};
    uint64_t st[FF_ST__COUNT];
    uint8_t p[60];
    long n;
    ip4(p, 60, 0x0a320001u, TUN_ME);
    for (uint32_t a = 10; a < 50; a++) {
        int s = udp_sock(LO(a), 0);
        send_to(s, LO(1), port, p, 60);
        send_to(s, LO(1), port, p, 60);
        close(s);
    }
    for (int i = 0; i < 600; i++) {
        ff_fwd_stats(fw, st);
        if (st[FF_ST_UNKNOWN_SENDER] >= 80)
            break;
        nanosleep(&ts, NULL);
    }
    CHECK_EQ(st[FF_ST_UNKNOWN_SENDER], 80);
    n = ff_fwd_unknown_senders(fw, out, FF_UNKNOWN_SENDERS, &other);
    CHECK(n > 0 && n <= (long)FF_UNKNOWN_SENDERS);
    for (long i = 0; i < n; i++) {
        CHECK(out[i].ip >= LO(10) && out[i].ip < LO(50));
        CHECK_EQ(out[i].packets, 2);
        total += out[i].packets;
    }
    CHECK_EQ(total + other, 80);
}

/* Counting goes on exactly while the table is replaced under it: route A in every table, the
 * others coming and going (their indices freed and reused), traffic both ways through A. */
static void check_churn(struct ff_fwd *fw, int peer_sock, uint16_t port, uint16_t myport)
{
    struct ff_route with[3] = {{NET_A, 16, LO(1), myport}, {NET_B, 16, LO(2), 8285},
                               {NET_C, 16, LO(3), 8285}};
    struct ff_route without[2] = {{NET_A, 16, LO(1), myport}, {NET_D, 16, LO(4), 8285}};
    struct ff_peer_stats a0 = peer(fw, NET_A);
    uint8_t p[60], buf[2048];
    int ks = udp_sock(TUN_ME, 0), got = 0;
    uint64_t rx0 = a0.v[FF_PS_RX_PACKETS], tx0 = a0.v[FF_PS_TX_PACKETS];
    ip4(p, 60, NET_A | 7, TUN_ME);           /* UDP length 0: the kernel drops it, no ICMP back */
    memset(buf, 0x5a, sizeof(buf));
    for (int round = 0; round < 200; round++) {
        send_to(peer_sock, LO(1), port, p, 60);          /* udp->tun, from A */
        send_to(ks, NET_A | 5, 9, buf, 100);             /* tun->udp, to A */
        CHECK_EQ(round & 1 ? ff_fwd_replace_routes(fw, with, 3)
                           : ff_fwd_replace_routes(fw, without, 2), 0);
    }
    while (got < 200) {
        struct pollfd pfd = {peer_sock, POLLIN, 0};
        if (poll(&pfd, 1, 2000) != 1)
            break;
        if (recv(peer_sock, buf, sizeof(buf), 0) == 128)
            got++;
    }
    CHECK_EQ(got, 200);
    CHECK_EQ(wait_peer(fw, NET_A, FF_PS_RX_PACKETS, rx0 + 200), rx0 + 200);
    CHECK_EQ(wait_peer(fw, NET_A, FF_PS_TX_PACKETS, tx0 + 200), tx0 + 200);
    CHECK_EQ(peer(fw, NET_A).v[FF_PS_TX_BYTES], a0.v[FF_PS_TX_BYTES] + 200 * 128);
    CHECK_EQ(peer(fw, NET_A).pidx, a0.pidx);
    CHECK_EQ(peer(fw, NET_B).v[FF_PS_RX_PACKETS], 0);   /* B came back: a fresh row */
    close(ks);
}

/* The index of each route stays while the route does; freed ones are reused with zero counts. */
static void check_indices(struct ff_fwd *fw, uint16_t myport)
{
    struct ff_route rs[3] = {{NET_A, 16, LO(1), myport}, {NET_C, 16, LO(3), 8285},
                             {NET_D, 16, LO(4), 8285}};
    struct ff_peer_stats a0 = peer(fw, NET_A), b0 = peer(fw, NET_B), c0 = peer(fw, NET_C), d, e, a;
    CHECK(a0.pidx && b0.pidx && c0.pidx && a0.pidx != b0.pidx && b0.pidx != c0.pidx &&
          a0.pidx != c0.pidx);
    CHECK(b0.v[FF_PS_RX_PACKETS] > 0);               /* B had traffic: its reuse must not show it */
    CHECK_EQ(ff_fwd_replace_routes(fw, rs, 3), 0);
    a = peer(fw, NET_A);
    CHECK_EQ(memcmp(&a, &a0, sizeof(a0)), 0);         /* same index, same counts */
    CHECK_EQ(peer(fw, NET_C).pidx, c0.pidx);
    d = peer(fw, NET_D);
    /* B's index was still in use while D's was chosen: D got another one */
    CHECK(d.pidx && d.pidx != a0.pidx && d.pidx != b0.pidx && d.pidx != c0.pidx);
    add(fw, NET_E, LO(6), 8285);                      /* now B's index is free and lowest */
    e = peer(fw, NET_E);
    CHECK_EQ(e.pidx, b0.pidx);
    for (int k = 0; k < FF_PS__COUNT; k++)
        CHECK_EQ(e.v[k], 0);
    CHECK_EQ(ff_fwd_remove_route(fw, NET_C, 16), 0);
    add(fw, NET_F, LO(7), 8285);
    CHECK_EQ(peer(fw, NET_F).pidx, c0.pidx);
    a = peer(fw, NET_A);
    CHECK_EQ(memcmp(&a, &a0, sizeof(a0)), 0);
    /* the same subnet behind another address is another peer: a new index, zero counts */
    add(fw, NET_A, LO(5), myport);
    CHECK(peer(fw, NET_A).pidx != a0.pidx);
    CHECK_EQ(peer(fw, NET_A).v[FF_PS_RX_PACKETS], 0);
    add(fw, NET_A, LO(1), myport);
    CHECK_EQ(ff_fwd_route_count(fw), 4);
}

struct update {
    struct ff_fwd *fw;
    uint32_t net;
    int add;                     /* add the route to 127.0.0.2, else remove it */
    int done;
};

static void *update_thread(void *arg)
{
    struct update *u = arg;
    struct ff_route r = {u->net, 16, LO(2), 8285};
    CHECK_EQ(u->add ? ff_fwd_add_route(u->fw, &r) : ff_fwd_remove_route(u->fw, u->net, 16), 0);
    __atomic_store_n(&u->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Whether the update finished within ms milliseconds. */
static int finished_within(struct update *u, int ms)
{
    struct timespec ts = {0, 1000 * 1000};
    for (int i = 0; i < ms && !__atomic_load_n(&u->done, __ATOMIC_ACQUIRE); i++)
        nanosleep(&ts, NULL);
    return __atomic_load_n(&u->done, __ATOMIC_ACQUIRE);
}

/* A stopped forwarder with a tun->udp batch played by hand (its busy counter odd): an addition
 * (nothing freed) must not wait for it, a removal must, until the batch ends. */
static void check_quiescence(struct ff_fwd *fw)
{
    struct update a = {fw, NET_E, 1, 0}, r = {fw, NET_C, 0, 0};
    pthread_t ta, tr;
    CHECK_EQ(ff_fwd_stop(fw), 0);
    __atomic_store_n(&fw->w[0].busy, fw->w[0].busy + 1, __ATOMIC_RELAXED);
    CHECK_EQ(pthread_create(&ta, NULL, update_thread, &a), 0);
    CHECK(finished_within(&a, 2000));
    CHECK_EQ(pthread_create(&tr, NULL, update_thread, &r), 0);
    CHECK(!finished_within(&r, 50));
    __atomic_store_n(&fw->w[0].busy, fw->w[0].busy + 1, __ATOMIC_RELEASE);
    CHECK(finished_within(&r, 2000));
    pthread_join(ta, NULL);
    pthread_join(tr, NULL);
}

static int run(uint32_t flags, uint32_t workers)
{
    struct ff_opts o = {.tun_name = "ffpeer%d", .tun_fd = -1, .bind_ip = LO(1), .port = 0,
                        .tun_ip = TUN_ME, .tun_prefix = 8, .batch = 64,
                        .flags = FF_F_ANTI_SPOOF | flags,
                        .workers = workers};
    struct ff_fwd *fw;
    int ps, psb, rc = ff_fwd_open(&fw, &o);
    uint16_t port, myport;
    uint8_t p[60];

    CHECK_EQ(rc, 0);
    if (rc)
        return 1;
    port = ff_fwd_port(fw);
    CHECK(tun_up(ff_fwd_tun_name(fw)));
    CHECK_EQ(ff_fwd_start(fw), 0);
    ps = udp_sock(LO(1), 0);
    myport = sock_port(ps);
    psb = udp_sock(LO(2), 0);
    add(fw, NET_A, LO(1), myport);
    add(fw, NET_B, LO(2), sock_port(psb));
    add(fw, NET_C, LO(3), 8285);
    check_tx(fw, ps, 50, 100);
    check_tx(fw, ps, 7, 1000);
    check_rx(fw, ps, port);
    ip4(p, 60, NET_B | 9, TUN_ME);
    send_to(psb, LO(1), port, p, 60);
    CHECK_EQ(wait_peer(fw, NET_B, FF_PS_RX_PACKETS, 1), 1);
    check_unknown(fw, port);
    check_indices(fw, myport);
    check_churn(fw, ps, port, myport);
    check_quiescence(fw);
    ff_fwd_close(fw);
    close(ps);
    close(psb);
    return 0;
}

int main(void)
{
    int rc = setup_netns();
    if (rc == -EPERM || rc == -EACCES)
        return 77;
    CHECK_EQ(rc, 0);
    run(0, 1);
    run(FF_F_OFFLOAD, 1);          /* UDP_GSO trains, GRO receive */
    run(FF_F_OFFLOAD, 2);          /* two workers: rows and unknown-sender tables per worker */
    CHECK_DONE();
}
