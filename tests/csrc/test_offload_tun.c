/* The offload helpers against the real kernel: a TUN with IFF_VNET_HDR + TUNSETOFFLOAD in a
 * private network namespace (unshare), with kernel TCP/UDP sockets at the other end.
 *   1. TSO read: a kernel TCP sender's superframe is split by ff_gso_split; every segment's
 *      checksums verify and the bytes equal what the socket sent. Partial checksums of plain
 *      reads are finished by ff_vnet_csum_finish. Each read is also relayed the way the fast
 *      path does: the segments as the iovecs of one UDP_SEGMENT sendmsg over lo -> a UDP_GRO
 *      socket -> ff_udp_gro_cmsg_size + the iterator, datagram by datagram equal to them.
 *   2. GRO write: a handshake played from user space, then ff_gro coalesces 10 segments into one
 *      GSO_TCPV4 item written with writev; the kernel socket receives the exact bytes.
 * Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for unshare); exits 77 (skipped) without. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/if_tun.h>

#include "ff_offload.h"

static int g_checks, g_fail;
#define CHECK(c) do { g_checks++; if (!(c)) { g_fail++; \
    fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); } } while (0)
#define CHECK_EQ(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); g_checks++; \
    if (a_ != b_) { g_fail++; fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", \
        __FILE__, __LINE__, #a, a_, #b, b_); } } while (0)

#define ME 0x0a630001u     /* 10.99.0.1: the kernel's address on the TUN */
#define PEER 0x0a630002u   /* 10.99.0.2: played from user space */

static int l4_ok(const uint8_t *p, size_t len)
{
    size_t ihl = (size_t)(p[0] & 15) * 4;
    return ff_ck_fold(ff_ck_add(ff_ck_pseudo4(p, p[9], (uint16_t)(len - ihl)), p + ihl, len - ihl)) == 0xffff;
}

static void ip_hdr(uint8_t *p, size_t len, uint8_t proto, uint32_t src, uint32_t dst)
{
    memset(p, 0, 20);
    p[0] = 0x45; ff_st16(p + 2, (uint16_t)len); ff_st16(p + 6, 0x4000); p[8] = 64; p[9] = proto;
    ff_st32(p + 12, src); ff_st32(p + 16, dst);
    ff_ip4_set_csum(p);
}

static void l4_csum(uint8_t *p, size_t len, size_t at)
{
    p[20 + at] = p[21 + at] = 0;
    uint16_t c = (uint16_t)~ff_ck_fold(ff_ck_add(ff_ck_pseudo4(p, p[9], (uint16_t)(len - 20)), p + 20, len - 20));
    if (p[9] == 17 && c == 0)
        c = 0xffff;
    ff_st16(p + 20 + at, c);
}

/* PEER:sport -> ME:dport TCP segment with an optional MSS option; returns the length. */
static size_t mk_tcp(uint8_t *p, uint16_t sport, uint16_t dport, uint32_t seq, uint32_t ack,
                     uint8_t flags, const uint8_t *pay, size_t n, int mss_opt)
{
    size_t thl = mss_opt ? 24 : 20, len = 20 + thl + n;
    ip_hdr(p, len, 6, PEER, ME);
    uint8_t *t = p + 20;
    memset(t, 0, thl);
    ff_st16(t, sport); ff_st16(t + 2, dport); ff_st32(t + 4, seq); ff_st32(t + 8, ack);
    t[12] = (uint8_t)(thl / 4 << 4); t[13] = flags; ff_st16(t + 14, 65535);
    if (mss_opt) { t[20] = 2; t[21] = 4; ff_st16(t + 22, 1460); }
    if (n)
        memcpy(t + thl, pay, n);
    l4_csum(p, len, 16);
    return len;
}

static int tun_write(int fd, const uint8_t *p, size_t len)
{
    struct virtio_net_hdr h = { 0 };
    struct iovec iov[2] = { { &h, sizeof h }, { (void *)p, len } };
    return (int)writev(fd, iov, 2) == (int)(sizeof h + len) ? 0 : -errno;
}

/* Read the next IPv4 packet of protocol proto (others are skipped), finishing a partial checksum
 * of a non-GSO read. Returns the packet length or -ETIMEDOUT. */
static int tun_read(int fd, uint8_t *buf, size_t cap, struct virtio_net_hdr *h, uint8_t proto)
{
    static uint8_t raw[70000];
    for (;;) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        if (poll(&pfd, 1, 2000) != 1)
            return -ETIMEDOUT;
        ssize_t n = read(fd, raw, sizeof raw);
        if (n < (ssize_t)(sizeof *h + 20))
            continue;
        memcpy(h, raw, sizeof *h);
        size_t len = (size_t)n - sizeof *h;
        const uint8_t *p = raw + sizeof *h;
        if ((p[0] >> 4) != 4 || p[9] != proto || len > cap)
            continue;
        memcpy(buf, p, len);
        if (h->gso_type == VIRTIO_NET_HDR_GSO_NONE && (h->flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)) {
            CHECK_EQ(ff_vnet_csum_finish(h, buf, len), 0);
            CHECK(l4_ok(buf, len));
            h->flags &= (uint8_t)~VIRTIO_NET_HDR_F_NEEDS_CSUM;   /* finished: do not redo */
        }
        return (int)len;
    }
}

static int setup(int *tunfd)
{
    if (unshare(CLONE_NEWNET) < 0)
        return -errno;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct ifreq ifr = { 0 };
    strcpy(ifr.ifr_name, "ffoff0");
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0)
        return -errno;
    /* what the fast path asks for (ff_io.c): TSO needs CSUM */
    CHECK(ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4) == 0);

    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in *sa = (struct sockaddr_in *)&ifr.ifr_addr;
    memset(&ifr.ifr_ifru, 0, sizeof ifr.ifr_ifru);
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(ME);
    CHECK(ioctl(s, SIOCSIFADDR, &ifr) == 0);
    sa->sin_addr.s_addr = htonl(0xffffff00u);
    CHECK(ioctl(s, SIOCSIFNETMASK, &ifr) == 0);
    ifr.ifr_flags = IFF_UP | IFF_RUNNING;
    CHECK(ioctl(s, SIOCSIFFLAGS, &ifr) == 0);
    struct ifreq lo = { .ifr_name = "lo", .ifr_flags = IFF_UP | IFF_RUNNING };
    CHECK(ioctl(s, SIOCSIFFLAGS, &lo) == 0);
    close(s);
    *tunfd = fd;
    return 0;
}

static uint8_t g_data[200000];

/* The tun->udp fast path in miniature: the k segments of ff_gso_split as the iovecs of one
 * UDP_SEGMENT sendmsg over loopback (gso_size = the first segment's length, as ff_udp_gso_plan
 * groups them), received with UDP_GRO; walking the datagrams must give back each segment.
 * Returns the datagrams received. */
static int relay_udp(int tx, int rx, int k, uint8_t seg[][2048], const uint16_t *lens)
{
    static uint8_t got[70000];
    struct iovec iov[64];
    size_t total = 0;
    for (int i = 0; i < k; i++) {
        iov[i] = (struct iovec){ seg[i], lens[i] };
        total += lens[i];
    }
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(7000), .sin_addr.s_addr = htonl(0x7f000001) };
    union { struct cmsghdr c; uint8_t b[FF_UDP_GSO_CMSG_SPACE]; } ctl;
    struct msghdr m = { .msg_name = &to, .msg_namelen = sizeof to, .msg_iov = iov, .msg_iovlen = (size_t)k };
    if (k > 1) {
        m.msg_control = ctl.b;
        m.msg_controllen = (size_t)ff_udp_gso_cmsg(ctl.b, sizeof ctl.b, lens[0]);
    }
    CHECK_EQ(sendmsg(tx, &m, 0), (ssize_t)total);
    int got_dg = 0;
    while (got_dg < k) {
        struct pollfd pfd = { rx, POLLIN, 0 };
        if (poll(&pfd, 1, 2000) != 1)
            break;
        union { struct cmsghdr c; uint8_t b[64]; } rc;
        struct iovec ri = { got, sizeof got };
        struct msghdr rm = { .msg_iov = &ri, .msg_iovlen = 1, .msg_control = rc.b, .msg_controllen = sizeof rc.b };
        ssize_t r = recvmsg(rx, &rm, 0);
        if (r <= 0)
            break;
        struct ff_gro_iter it;
        const uint8_t *dg;
        size_t dl;
        ff_udp_gro_iter_init(&it, got, (size_t)r, ff_udp_gro_cmsg_size(&rm));
        while (ff_udp_gro_next(&it, &dg, &dl) && got_dg < k) {
            CHECK_EQ(dl, lens[got_dg]);
            CHECK(memcmp(dg, seg[got_dg], dl) == 0);
            got_dg++;
        }
    }
    CHECK_EQ(got_dg, k);
    return got_dg;
}

/* 1. The kernel sends; we answer the handshake and read TSO superframes. */
static void test_tso_read(int tun)
{
    static uint8_t p[70000], seg[64][2048];
    struct virtio_net_hdr h;
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(5201), .sin_addr.s_addr = htonl(PEER) };
    CHECK(connect(c, (struct sockaddr *)&to, sizeof to) < 0 && errno == EINPROGRESS);
    int n = tun_read(tun, p, sizeof p, &h, 6);
    CHECK(n >= 40 && p[33] == 0x02);   /* SYN */
    if (n < 40) return;
    uint16_t cport = ff_ld16(p + 20);
    uint32_t cisn = ff_ld32(p + 24), sisn = 777000;
    uint8_t q[100];
    size_t ql = mk_tcp(q, 5201, cport, sisn, cisn + 1, 0x12, NULL, 0, 1);
    CHECK_EQ(tun_write(tun, q, ql), 0);
    struct pollfd pfd = { c, POLLOUT, 0 };
    CHECK(poll(&pfd, 1, 2000) == 1);
    ssize_t sent = send(c, g_data, sizeof g_data, 0);
    CHECK(sent > 20000);
    /* Read until we have seen a superframe (the final ACK of the handshake comes first). */
    uint32_t next = cisn + 1;
    int supers = 0, segs_total = 0, relayed = 0, one = 1;
    int tx = socket(AF_INET, SOCK_DGRAM, 0), rx = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in lo = { .sin_family = AF_INET, .sin_port = htons(7000), .sin_addr.s_addr = htonl(0x7f000001) };
    CHECK(bind(rx, (struct sockaddr *)&lo, sizeof lo) == 0);
    CHECK(setsockopt(rx, SOL_UDP, UDP_GRO, &one, sizeof one) == 0);
    while (next - (cisn + 1) < 14600 && (n = tun_read(tun, p, sizeof p, &h, 6)) > 0) {
        uint8_t *outs[64];
        uint16_t lens[64];
        for (int i = 0; i < 64; i++) outs[i] = seg[i];
        int k = ff_gso_split(&h, p, (size_t)n, outs, sizeof seg[0], lens, 64);
        CHECK(k >= 1);
        if (k >= 1)
            relayed += relay_udp(tx, rx, k, seg, lens);
        if (h.gso_type == VIRTIO_NET_HDR_GSO_TCPV4) {
            if (!supers++)
                printf("TSO read: first superframe %d B, gso_size %u, hdr_len %u, csum_start %u, "
                       "flags %u\n", n, h.gso_size, h.hdr_len, h.csum_start, h.flags);
            CHECK(k > 1);
        }
        for (int i = 0; i < k; i++) {
            const uint8_t *s = seg[i];
            size_t thl = (size_t)(s[32] >> 4) * 4, pl = lens[i] - 20 - thl;
            CHECK_EQ(ff_ck(s, 20), 0);
            CHECK(l4_ok(s, lens[i]));
            CHECK_EQ(ff_ld16(s + 2), lens[i]);
            if (!pl) continue;
            CHECK_EQ(ff_ld32(s + 24), next);
            CHECK(memcmp(s + 20 + thl, g_data + (next - cisn - 1), pl) == 0);
            next += (uint32_t)pl;
            segs_total++;
        }
    }
    printf("TSO read: %d superframe(s), %d data segments, %u bytes verified\n", supers, segs_total,
           next - cisn - 1);
    printf("TSO read -> UDP_SEGMENT send -> UDP_GRO receive over lo: %d datagrams matched\n", relayed);
    CHECK(supers >= 1);
    CHECK(next - (cisn + 1) >= 14600);
    close(tx);
    close(rx);
    close(c);
}

/* 2. We send: handshake from user space, then one GRO item of 10 segments. */
static void test_gro_write(int tun)
{
    static uint8_t p[2000], seg[10][1100];
    struct virtio_net_hdr h;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(5202), .sin_addr.s_addr = htonl(ME) };
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(l, 4) == 0);
    uint32_t isn = 1000000;
    size_t n = mk_tcp(p, 40000, 5202, isn, 0, 0x02, NULL, 0, 1);
    CHECK_EQ(tun_write(tun, p, n), 0);
    int r = tun_read(tun, p, sizeof p, &h, 6);
    CHECK(r >= 40 && p[33] == 0x12);   /* SYN-ACK */
    if (r < 40) return;
    uint32_t sisn = ff_ld32(p + 24);
    n = mk_tcp(p, 40000, 5202, isn + 1, sisn + 1, 0x10, NULL, 0, 0);
    CHECK_EQ(tun_write(tun, p, n), 0);
    struct pollfd pfd = { l, POLLIN, 0 };
    CHECK(poll(&pfd, 1, 2000) == 1);
    int c = accept(l, NULL, NULL);
    CHECK(c >= 0);

    struct ff_gro *g = ff_gro_new(16, 0);
    size_t lens[10];
    for (int i = 0; i < 10; i++) {
        lens[i] = mk_tcp(seg[i], 40000, 5202, isn + 1 + 1000u * (uint32_t)i, sisn + 1,
                         (uint8_t)(0x10 | (i == 9 ? 0x08 : 0)), g_data + 1000 * i, 1000, 0);
        CHECK_EQ(ff_gro_add(g, seg[i], lens[i]), i ? FF_GRO_MERGED : FF_GRO_NEW_ITEM);
    }
    CHECK_EQ(ff_gro_finish(g), 1);
    struct iovec iov[FF_GRO_MAX_IOV];
    int ni = ff_gro_item_iov(g, 0, iov, FF_GRO_MAX_IOV);
    CHECK_EQ(ni, 11);
    ssize_t w = writev(tun, iov, ni);
    CHECK_EQ(w, FF_VNET_HDR_LEN + 40 + 10000);
    static uint8_t got[20000];
    size_t have = 0;
    while (have < 10000) {
        pfd = (struct pollfd){ c, POLLIN, 0 };
        if (poll(&pfd, 1, 2000) != 1) break;
        ssize_t k = recv(c, got + have, sizeof got - have, 0);
        if (k <= 0) break;
        have += (size_t)k;
    }
    CHECK_EQ(have, 10000);
    CHECK(memcmp(got, g_data, 10000) == 0);
    printf("GRO write: 10 segments -> 1 GSO_TCPV4 write of %zd bytes; socket received %zu bytes\n", w, have);
    ff_gro_free(g);
    close(c);
    close(l);
}

int main(void)
{
    for (size_t i = 0; i < sizeof g_data; i++)
        g_data[i] = (uint8_t)(i * 2654435761u >> 13);
    int tun = -1;
    int rc = setup(&tun);
    if (rc == -EPERM || rc == -EACCES || rc == -ENOENT || rc == -ENODEV) {
        printf("test_offload_tun: skipped (%s)\n", strerror(-rc));
        return 77;
    }
    CHECK_EQ(rc, 0);
    if (rc)
        return 1;
    test_tso_read(tun);
    test_gro_write(tun);
    close(tun);
    printf("test_offload_tun: %d checks, %d failed\n", g_checks, g_fail);
    return g_fail != 0;
}
