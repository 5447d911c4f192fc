# C declarations for csrc/ff_fwd.h (the forwarder); no logic here.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from ff_table cimport ff_route

cdef extern from "ff_fwd.h" nogil:
    enum:
        FF_F_ANTI_SPOOF
        FF_F_OFFLOAD
        FF_F_TUN_TSO
        FF_F_UDP_GSO
        FF_F_UDP_GRO
        FF_F_TCP_GRO
        FF_F_DUPLEX
        FF_ST__COUNT
        FF_ST_DROP_FIRST
        FF_ST_DROP_LAST
        FF_MAX_BATCH
        FF_DEFAULT_BATCH
        FF_DEFAULT_PORT
        FF_MAX_WORKERS
        FF_PEER_MAX
        FF_PS__COUNT
        FF_UNKNOWN_SENDERS
        FF_OFFLOAD_NPARTS

    const char *const ff_stat_names[]
    const char *const ff_peer_stat_names[]

    struct ff_peer_stats:
        ff_route route
        uint32_t pidx
        uint64_t v[10]

    struct ff_sender_stats:
        uint32_t ip
        uint64_t packets

    struct ff_opts:
        const char *tun_name
        int tun_fd
        uint32_t bind_ip
        uint16_t port
        uint32_t tun_ip
        uint32_t batch
        uint32_t flags
        uint32_t workers
        uint32_t refuse
        uint8_t tun_prefix

    struct ff_fwd:
        pass

    int ff_fwd_open(ff_fwd **out, const ff_opts *o)
    const char *ff_fwd_tun_name(const ff_fwd *fw)
    uint16_t ff_fwd_port(const ff_fwd *fw)
    int ff_fwd_start(ff_fwd *fw)
    int ff_fwd_stop(ff_fwd *fw)
    void ff_fwd_close(ff_fwd *fw)
    int ff_fwd_replace_routes(ff_fwd *fw, const ff_route *routes, size_t n)
    int ff_fwd_add_route(ff_fwd *fw, const ff_route *r)
    int ff_fwd_remove_route(ff_fwd *fw, uint32_t net, uint8_t prefix)
    long ff_fwd_routes(ff_fwd *fw, ff_route *out, size_t cap)
    long ff_fwd_route_count(ff_fwd *fw)
    void ff_fwd_stats(const ff_fwd *fw, uint64_t *out)
    int ff_fwd_queue_stats(const ff_fwd *fw, uint32_t q, uint64_t *out)
    uint32_t ff_fwd_workers(const ff_fwd *fw)
    uint32_t ff_fwd_features(const ff_fwd *fw)
    long ff_fwd_peer_stats(ff_fwd *fw, ff_peer_stats *out, size_t cap)
    long ff_fwd_unknown_senders(const ff_fwd *fw, ff_sender_stats *out, size_t cap, uint64_t *other)
    void ff_fwd_fallbacks(const ff_fwd *fw, uint64_t *out)
