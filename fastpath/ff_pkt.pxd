# C declarations for csrc/ff_pkt.h (IPv4 validation, TTL, ICMP); no logic here.
from libc.stdint cimport uint8_t, uint32_t

cdef extern from "ff_pkt.h" nogil:
    enum:
        FF_ICMP_MAX_LEN

    enum ff_ip4_verdict:
        FF_IP4_OK
        FF_IP4_SHORT
        FF_IP4_BAD_HEADER
        FF_IP4_BAD_LENGTH

    enum ff_ttl:
        FF_TTL_OK
        FF_TTL_EXPIRED

    ff_ip4_verdict ff_ip4_validate(const uint8_t *p, size_t len)
    ff_ttl ff_ip4_dec_ttl(uint8_t *p)
    uint32_t ff_ip4_dst(const uint8_t *p)
    bint ff_icmp_due(const uint8_t *pkt)
    int ff_icmp_net_unreach(const uint8_t *pkt, size_t len, uint32_t tun_ip, uint8_t *out,
                            size_t outcap)
