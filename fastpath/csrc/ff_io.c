/* TUN device and UDP socket setup for the forwarder. */
#define _GNU_SOURCE
#include "ff_fwd_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/filter.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* Offloads we take from the TUN with IFF_VNET_HDR: partial checksums and IPv4 TSO (split by
 * ff_gso_split). No TSO6 (flannel's udp backend is IPv4) and no USO (UDP superframes). */
static int tun_set_offload(int fd)
{
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4)) < 0 ? -errno : 0;
}

int ff_tun_open(const char *name, int vnet, int mq, char *actual, size_t actual_len)
{
    struct ifreq ifr;
    int fd, err;

    if (!name || strlen(name) >= IFNAMSIZ)
        return -EINVAL;
    fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    memset(&ifr, 0, sizeof(ifr));
    /* flannel: IFF_TUN|IFF_NO_PI, no packet-info header, no vnet header (docs/flannel-compat.md
     * §"udp backend"); the vnet header only with the offload tier */
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0) | (mq ? IFF_MULTI_QUEUE : 0);
    memcpy(ifr.ifr_name, name, strlen(name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || (vnet && tun_set_offload(fd) < 0)) {
        err = -errno;
        close(fd);
        return err;
    }
    if (actual && actual_len) {
        strncpy(actual, ifr.ifr_name, actual_len - 1);
        actual[actual_len - 1] = '\0';
    }
    return fd;
}

/* Adopt a TUN fd opened elsewhere: dup it (the caller keeps its own), make it non-blocking and
 * ask the kernel for the device name. */
int ff_tun_adopt(int fd, int vnet, int mq, char *actual, size_t actual_len)
{
    struct ifreq ifr;
    int nfd, fl, err;

    nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (nfd < 0)
        return -errno;
    memset(&ifr, 0, sizeof(ifr));
    if ((fl = fcntl(nfd, F_GETFL)) < 0 || fcntl(nfd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        ioctl(nfd, TUNGETIFF, &ifr) < 0) {
        err = -errno;
        close(nfd);
        return err;
    }
    /* the packet framing must match what the loops expect */
    err = (!!(ifr.ifr_flags & IFF_VNET_HDR) != !!vnet ||
           (mq && !(ifr.ifr_flags & IFF_MULTI_QUEUE))) ? -EINVAL
          : vnet ? tun_set_offload(nfd) : 0;
    if (err < 0) {
        close(nfd);
        return err;
    }
    strncpy(actual, ifr.ifr_name, actual_len - 1);
    actual[actual_len - 1] = '\0';
    return nfd;
}

static void set_buf(int fd, int force_opt, int opt)
{
    int v = (int)FF_SOCK_BUF_BYTES;

    /* *BUFFORCE ignores rmem_max/wmem_max but needs CAP_NET_ADMIN; fall back to the capped one */
    if (setsockopt(fd, SOL_SOCKET, force_opt, &v, sizeof(v)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, opt, &v, sizeof(v));
}

int ff_udp_open(uint32_t bind_ip, uint16_t port, int reuseport)
{
    struct sockaddr_in sa;
    int fd, err, one = 1;

    fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF);
    set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(bind_ip);
    sa.sin_port = htons(port);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

#ifndef UDP_GRO
#define UDP_GRO 104        /* linux/udp.h, Linux >= 5.0 */
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

int ff_udp_set_gro(int fd, int on)
{
    return setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof(on)) < 0 ? -errno : 0;
}

int ff_sock_port(int fd)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);

    if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
        return -errno;
    return ntohs(sa.sin_port);
}

/* Classic BPF for the reuseport group (SO_ATTACH_REUSEPORT_CBPF, Linux 4.5): the kernel runs it
 * with skb->data at the UDP payload, so the outer headers are reached through SKF_NET_OFF; the
 * outer IPv4 header is taken as 20 bytes (no options: ours and flannel's senders set none). The
 * returned index picks the socket; an index >= n falls back to the kernel's 4-tuple hash. */
int ff_udp_steer_by_sport(int fd, uint32_t n)
{
    struct sock_filter code[] = {
        /* A = the UDP source port */
        {BPF_LD | BPF_H | BPF_ABS, 0, 0, (uint32_t)SKF_NET_OFF + FF_IP4_HDR_MIN + FF_UDP_SPORT},
        {BPF_ALU | BPF_MOD | BPF_K, 0, 0, n},
        {BPF_RET | BPF_A, 0, 0, 0},
    };
    struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};

    if (n < 1)
        return -EINVAL;
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) < 0 ? -errno
                                                                                          : 0;
}
