/* TUN device and UDP socket setup for the forwarder. */
#define _GNU_SOURCE
#include "ff_fwd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* Offloads we can take from the TUN with IFF_VNET_HDR: partial checksums and IPv4 TSO (split
 * by ff_gso_split). No TSO6 (flannel's udp backend is IPv4) and no USO for now. */
static int set_offload(int fd)
{
    return ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4)) < 0 ? -errno : 0;
}

int ff_tun_open(const char *name, int vnet, char *actual, size_t actual_len)
{
    struct ifreq ifr;
    int fd, err;

    if (!name || strlen(name) >= IFNAMSIZ)
        return -EINVAL;
    fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    memset(&ifr, 0, sizeof(ifr));
    /* flannel: IFF_TUN|IFF_NO_PI, no packet-info header, no vnet header (FLANNEL.md 4.1) */
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
    memcpy(ifr.ifr_name, name, strlen(name));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || (vnet && (err = set_offload(fd)) < 0)) {
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
int ff_tun_adopt(int fd, int vnet, char *actual, size_t actual_len)
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
    err = !!(ifr.ifr_flags & IFF_VNET_HDR) != !!vnet ? -EINVAL : vnet ? set_offload(nfd) : 0;
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

int ff_udp_open(uint32_t bind_ip, uint16_t port)
{
    struct sockaddr_in sa;
    int fd, err;

    fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
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

int ff_udp_enable_gro(int fd)
{
    int one = 1;

    return setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) < 0 ? -errno : 0;
}

int ff_sock_port(int fd)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);

    if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
        return -errno;
    return ntohs(sa.sin_port);
}
