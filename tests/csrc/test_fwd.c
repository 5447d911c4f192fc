/* Forwarder loop under the sanitizers: malformed, unknown-sender and spoofed datagrams are
 * counted, and route tables are replaced many times while datagrams flow (reclamation); once
 * plain and with FF_F_OFFLOAD (vnet-header TUN, received packets through ff_gro), with one and
 * several workers (multi-queue TUN, SO_REUSEPORT group), with offload parts refused at open, and
 * duplex (one thread per queue for both directions).
 * Needs a TUN device (root); exits 77 (skipped, see CMakeLists.txt) when it cannot make one. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ff_check.h"
#include "ff_csum.h"
#include "ff_fwd.h"

#define LOCALHOST 0x7f000001u

static void mk(uint8_t *p, size_t total, uint32_t src, uint32_t dst)
{
    uint16_t c;
    memset(p, 0, total);
    p[0] = 0x45;
    p[2] = (uint8_t)(total >> 8);
    p[3] = (uint8_t)total;
    p[8] = 64;
    p[9] = 17;
    for (int i = 0; i < 4; i++) {
        p[12 + i] = (uint8_t)(src >> (24 - 8 * i));
        p[16 + i] = (uint8_t)(dst >> (24 - 8 * i));
    }
    c = ff_ck(p, 20);
    p[10] = (uint8_t)(c >> 8);
    p[11] = (uint8_t)c;
}

static void sendto_fw(int s, uint16_t port, const uint8_t *p, size_t len)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port),
                             .sin_addr.s_addr = htonl(LOCALHOST)};
    CHECK(sendto(s, p, len, 0, (struct sockaddr *)&sa, sizeof(sa)) == (ssize_t)len);
}

/* Wait (bounded: 3 s) until counter i reaches want; returns its final value. */
static uint64_t wait_stat(struct ff_fwd *fw, int i, uint64_t want)
{
    uint64_t st[FF_ST__COUNT];
    struct timespec ts = {0, 5 * 1000 * 1000};
    for (int k = 0; k < 600; k++) {
        ff_fwd_stats(fw, st);
        if (st[i] >= want)
            break;
        nanosleep(&ts, NULL);
    }
    return st[i];
}

static int run(uint32_t flags, uint32_t workers, uint32_t refuse)
{
    struct ff_opts o = {.tun_name = "ffct%d", .tun_fd = -1, .bind_ip = LOCALHOST, .port = 0,
                        .tun_ip = 0x0a630000u, .batch = 16, .flags = flags,
                        .workers = workers, .refuse = refuse};
    struct ff_fwd *fw;
    struct sockaddr_in me;
    socklen_t ml = sizeof(me);
    uint8_t p[200];
    uint16_t port, myport;
    struct ff_route *rs;
    int s, rc;

    rc = ff_fwd_open(&fw, &o);
    if (rc == -EPERM || rc == -EACCES || rc == -ENOENT || rc == -ENODEV)
        return 77;
    CHECK_EQ(rc, 0);
    if (rc)
        return 1;
    CHECK(strncmp(ff_fwd_tun_name(fw), "ffct", 4) == 0);
    CHECK_EQ(ff_fwd_workers(fw), workers ? workers : 1);
    /* a part refused at open is off and counted; the others stay as asked */
    CHECK_EQ(ff_fwd_features(fw), (flags & FF_F_OFFLOAD) & ~refuse &
                                      ~((refuse & FF_F_TUN_TSO) ? FF_F_TCP_GRO : 0u));
    {
        uint64_t st[FF_ST__COUNT];
        uint64_t fb[FF_OFFLOAD_NPARTS];
        ff_fwd_stats(fw, st);
        CHECK_EQ(st[FF_ST_OFFLOAD_FALLBACKS], (uint64_t)(!!(refuse & FF_F_TUN_TSO) +
                                                         !!(refuse & FF_F_UDP_GRO)));
        /* by part, in the order tun_tso, udp_gso, udp_gro, tcp_gro: the refused part only */
        ff_fwd_fallbacks(fw, fb);
        CHECK_EQ(fb[0], !!(refuse & FF_F_TUN_TSO));
        CHECK_EQ(fb[1], 0);
        CHECK_EQ(fb[2], !!(refuse & FF_F_UDP_GRO));
        CHECK_EQ(fb[3], 0);
        CHECK_EQ(ff_fwd_queue_stats(fw, workers ? workers : 1, st), -ERANGE);
    }
    port = ff_fwd_port(fw);
    CHECK(port != 0);
    CHECK_EQ(ff_fwd_start(fw), 0);
    CHECK_EQ(ff_fwd_start(fw), -EALREADY);

    s = socket(AF_INET, SOCK_DGRAM, 0);
    me.sin_family = AF_INET;
    me.sin_addr.s_addr = htonl(LOCALHOST);
    me.sin_port = 0;
    CHECK(bind(s, (struct sockaddr *)&me, sizeof(me)) == 0);
    CHECK(getsockname(s, (struct sockaddr *)&me, &ml) == 0);
    myport = ntohs(me.sin_port);

    mk(p, 60, 0x0a630001u, 0x0a0a0001u);
    sendto_fw(s, port, p, 10);                       /* short */
    sendto_fw(s, port, p, 0);                        /* empty: short too (and one datagram) */
    p[0] = 0x65;
    sendto_fw(s, port, p, 60);                       /* bad header */
    p[0] = 0x45;
    sendto_fw(s, port, p, 50);                       /* bad length: total 60 > 50 */
    sendto_fw(s, port, p, 60);                       /* valid, but 127.0.0.1 is no peer yet */
    CHECK_EQ(wait_stat(fw, FF_ST_UNKNOWN_SENDER, 1), 1);
    CHECK_EQ(wait_stat(fw, FF_ST_SHORT, 2), 2);
    CHECK_EQ(wait_stat(fw, FF_ST_BAD_HEADER, 1), 1);
    CHECK_EQ(wait_stat(fw, FF_ST_BAD_LENGTH, 1), 1);

    {
        struct ff_route r = {0x0a630000u, 16, LOCALHOST, myport};
        CHECK_EQ(ff_fwd_add_route(fw, &r), 0);
    }
    mk(p, 60, 0x0a620001u, 0x0a0a0001u);             /* inner source outside the peer's subnet */
    sendto_fw(s, port, p, 60);
    CHECK_EQ(wait_stat(fw, FF_ST_SPOOFED, 1), 1);

    /* replace the table many times while valid datagrams flow (TUN is down: tun_error counts) */
    rs = calloc(10000, sizeof(*rs));
    for (uint32_t i = 0; i < 10000; i++)
        rs[i] = (struct ff_route){0x0b000000u + (i << 12), 20, 0xc0000200u + (i & 255), 8285};
    rs[9999] = (struct ff_route){0x0a630000u, 16, LOCALHOST, myport};
    mk(p, 60, 0x0a630001u, 0x0a0a0001u);
    for (int round = 0; round < 100; round++) {
        sendto_fw(s, port, p, 60);
        CHECK_EQ(ff_fwd_replace_routes(fw, rs, 10000), 0);
    }
    {
        uint64_t st[FF_ST__COUNT];
        wait_stat(fw, FF_ST_UDP_RX_PACKETS, 106);
        ff_fwd_stats(fw, st);
        CHECK_EQ(st[FF_ST_UDP_RX_PACKETS], 106);
        CHECK_EQ(st[FF_ST_TUN_TX_PACKETS] + st[FF_ST_TUN_ERROR], 100);
        CHECK_EQ(st[FF_ST_SPOOFED], 1);
        CHECK_EQ(st[FF_ST_UNKNOWN_SENDER], 1);
    }
    CHECK_EQ(ff_fwd_route_count(fw), 10000);
    CHECK_EQ(ff_fwd_remove_route(fw, 0x0a630000u, 16), 0);
    CHECK_EQ(ff_fwd_remove_route(fw, 0x0a630000u, 16), -ENOENT);
    CHECK_EQ(ff_fwd_stop(fw), 0);
    CHECK_EQ(ff_fwd_stop(fw), 0);
    CHECK_EQ(ff_fwd_start(fw), 0);
    ff_fwd_close(fw);
    free(rs);
    close(s);
    return 0;
}

int main(void)
{
    if (run(FF_F_ANTI_SPOOF, 1, 0) == 77)
        return 77;
    run(FF_F_ANTI_SPOOF | FF_F_OFFLOAD, 1, 0);
    /* multi-queue: TUN queues, a SO_REUSEPORT group, per-worker send sockets */
    run(FF_F_ANTI_SPOOF, 2, 0);
    run(FF_F_ANTI_SPOOF | FF_F_OFFLOAD, 3, 0);
    /* open-time fallbacks: TUNSETOFFLOAD and UDP_GRO refused */
    run(FF_F_ANTI_SPOOF | FF_F_OFFLOAD, 1, FF_F_TUN_TSO | FF_F_UDP_GRO);
    run(FF_F_ANTI_SPOOF | FF_F_OFFLOAD, 2, FF_F_UDP_GRO);
    /* duplex: one thread per queue runs both directions (the receive checks and the epochs
     * of table replacement under load, as above) */
    run(FF_F_ANTI_SPOOF | FF_F_DUPLEX, 1, 0);
    run(FF_F_ANTI_SPOOF | FF_F_OFFLOAD | FF_F_DUPLEX, 2, 0);
    CHECK_DONE();
}
