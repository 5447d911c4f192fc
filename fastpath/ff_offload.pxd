# C declarations for csrc/ff_offload.h (checksums, virtio_net_hdr TSO/USO split, UDP GSO/GRO
# helpers, userspace GRO); no logic here. Only what the loops call. Everything is nogil.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from posix.uio cimport iovec

cdef extern from "ff_offload.h" nogil:
    enum:
        FF_VNET_HDR_LEN
        FF_UDP_GSO_MAX_BYTES
        FF_UDP_GSO_MAX_SEGS_OLD
        FF_UDP_GSO_MAX_SEGS_NEW
        FF_UDP_GSO_CMSG_SPACE
        FF_GRO_UDP
        FF_GRO_NO_TCP
        FF_GRO_MAX_IOV
        TUN_F_USO4
        TUN_F_USO6
        VIRTIO_NET_HDR_GSO_UDP_L4

    struct virtio_net_hdr:
        uint8_t flags
        uint8_t gso_type
        uint16_t hdr_len
        uint16_t gso_size
        uint16_t csum_start
        uint16_t csum_offset

    struct ff_gso_info:
        int nsegs
        uint16_t hdr_len
        uint16_t seg_len
        uint16_t last_len

    struct ff_gso_group:
        uint32_t start
        uint32_t count
        uint32_t bytes
        uint16_t gso_size

    struct ff_gro_iter:
        pass

    struct msghdr:
        pass

    struct ff_gro:
        pass

    uint16_t ff_ck(const void *p, size_t len)
    uint64_t ff_ck_add(uint64_t acc, const void *p, size_t len)
    uint16_t ff_ck_fold(uint64_t acc)

    int ff_vnet_csum_finish(const virtio_net_hdr *h, uint8_t *pkt, size_t len)
    int ff_gso_count(const virtio_net_hdr *h, const uint8_t *pkt, size_t len)
    int ff_gso_parse(const virtio_net_hdr *h, const uint8_t *pkt, size_t len, ff_gso_info *info)
    int ff_gso_split(const virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                     uint8_t * const *out, size_t out_cap, uint16_t *seg_lens, int max_segs)
    int ff_gso_split_contig(const virtio_net_hdr *h, const uint8_t *pkt, size_t len,
                            uint8_t *out, size_t out_cap, size_t *out_len)

    uint64_t ff_peer_key(uint32_t ip, uint16_t port)
    int ff_udp_gso_plan(const uint64_t *peer, const uint32_t *len, int n, int max_segs,
                        uint32_t max_bytes, ff_gso_group *out, int out_cap)
    int ff_udp_gso_cmsg(void *buf, size_t cap, uint16_t gso_size)
    int ff_udp_gro_cmsg_size(const msghdr *msg)
    void ff_udp_gro_iter_init(ff_gro_iter *it, const uint8_t *buf, size_t len, int gso_size)
    int ff_udp_gro_next(ff_gro_iter *it, const uint8_t **dg, size_t *dlen)

    ff_gro *ff_gro_new(int cap, unsigned flags)
    void ff_gro_free(ff_gro *g)
    void ff_gro_reset(ff_gro *g)
    void ff_gro_set_flags(ff_gro *g, unsigned flags)
    int ff_gro_add(ff_gro *g, uint8_t *pkt, size_t len)
    int ff_gro_finish(ff_gro *g)
    int ff_gro_item_iov(const ff_gro *g, int i, iovec *iov, int iov_cap)
    int ff_gro_item_copy(const ff_gro *g, int i, uint8_t *out, size_t cap)
    int ff_gro_item_segs(const ff_gro *g, int i)
