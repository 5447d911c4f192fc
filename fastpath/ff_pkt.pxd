# C declarations for csrc/ff_pkt.h (IPv4 validation, TTL, ICMP); no logic here.
from libc.stdint cimport uint8_t, uint32_t

cdef extern from "ff_pkt.h" nogil:
    enum:
        FF_ICMP_MAX_LEN
        FF_PKT_OK
        FF_PKT_SHORT
        FF_PKT_BAD_HEADER
        FF_PKT_BAD_LENGTH

    int ff_ipv4_validate(const uint8_t *p, size_t len)
    int ff_ipv4_dec_ttl(uint8_t *p)
    uint32_t ff_ipv4_dst(const uint8_t *p)
    int ff_icmp_net_unreach(const uint8_t *pkt, size_t len, uint32_t tun_ip, uint8_t *out,
                            size_t outcap)
