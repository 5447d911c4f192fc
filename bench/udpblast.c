/* udpblast: a batched UDP packet-rate tool for bench/e2e.py (iperf3 sends one packet per syscall,
 * so it measures its own sender, not the overlay).
 *
 *   udpblast send <dst-ip> <port> <seconds> <payload-bytes>   sendmmsg batches of 64
 *   udpblast recv <bind-ip> <port> <seconds>                  recvmmsg; prints packets received
 *
 * Both ends stop by themselves after <seconds>; the receiver also stops 1 s after traffic ends.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { BATCH = 64, MAXLEN = 2048 };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int blast(const char *ip, int port, double secs, size_t len)
{
    static char buf[BATCH][MAXLEN];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || inet_pton(AF_INET, ip, &dst.sin_addr) != 1 || len > MAXLEN)
        return 2;
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){.iov_base = buf[i], .iov_len = len};
        msgs[i].msg_hdr = (struct msghdr){.msg_name = &dst, .msg_namelen = sizeof(dst),
                                          .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    unsigned long long sent = 0;
    double end = now() + secs;
    while (now() < end) {
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0)
            sent += (unsigned long long)n;
        else if (n < 0 && errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED)
            return 3;
    }
    printf("%llu\n", sent);
    return 0;
}

static int sink(const char *ip, int port, double secs)
{
    static char buf[BATCH][MAXLEN];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_DGRAM, 0), one = 1, rcv = 8 << 20;
    if (fd < 0 || inet_pton(AF_INET, ip, &a.sin_addr) != 1)
        return 2;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof(rcv));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        return 2;
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){.iov_base = buf[i], .iov_len = MAXLEN};
        msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
    }
    printf("ready\n");
    fflush(stdout);
    unsigned long long got = 0;
    double end = now() + secs, first = 0, last = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (now() < end) {
        if (poll(&p, 1, 1000) <= 0) {
            if (got)
                break;      /* traffic ended */
            continue;
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
        if (n > 0) {
            if (!got)
                first = now();
            got += (unsigned long long)n;
            last = now();
        }
    }
    printf("%llu %.6f\n", got, last - first);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "send") == 0)
        return blast(argv[2], atoi(argv[3]), atof(argv[4]), (size_t)atoi(argv[5]));
    if (argc == 5 && strcmp(argv[1], "recv") == 0)
        return sink(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: udpblast send IP PORT SECONDS BYTES | recv IP PORT SECONDS\n");
    return 2;
}
