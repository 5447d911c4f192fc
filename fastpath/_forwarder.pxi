# The Forwarder: lifecycle NEW -> OPEN (-> running -> stopped)* -> CLOSED.
# Thread safety: route updates and stats may come from any thread (the C writer lock serializes
# updates); start/stop/close are serialized by _life, and close() waits for calls that are
# inside C without the GIL (_inflight) before freeing anything.
import threading as _threading
import time as _time
from libc.errno cimport ENOENT
from ff_fwd cimport (ff_fwd, ff_opts, ff_fwd_open, ff_fwd_tun_name, ff_fwd_port, ff_fwd_start,
                     ff_fwd_stop, ff_fwd_close, ff_fwd_replace_routes, ff_fwd_add_route,
                     ff_fwd_remove_route, ff_fwd_routes, ff_fwd_route_count, ff_fwd_stats,
                     ff_fwd_queue_stats, ff_fwd_workers, ff_fwd_features,
                     ff_fwd_peer_stats, ff_fwd_unknown_senders, ff_fwd_fallbacks,
                     ff_peer_stats, ff_sender_stats, ff_peer_stat_names,
                     FF_PS__COUNT, FF_PEER_MAX, FF_UNKNOWN_SENDERS, FF_OFFLOAD_NPARTS,
                     ff_stat_names, FF_ST__COUNT, FF_ST_DROP_FIRST, FF_ST_DROP_LAST,
                     FF_F_ANTI_SPOOF, FF_F_TUN_TSO, FF_F_UDP_GSO, FF_F_UDP_GRO, FF_F_TCP_GRO, FF_F_DUPLEX,
                     FF_MAX_BATCH, FF_MAX_WORKERS, FF_DEFAULT_BATCH, FF_DEFAULT_PORT)

cdef extern from "<errno.h>":
    int ENOTSUP          # libc.errno spells it only as EOPNOTSUPP

DEFAULT_PORT = FF_DEFAULT_PORT     # 8285, flannel's udp port (docs/flannel-compat.md §"udp wire format")
DEFAULT_BATCH = FF_DEFAULT_BATCH   # packets per recvmmsg/sendmmsg/TUN drain

#: The offload parts, each its own switch: Forwarder.open keyword -> C flag. Their daemon names
#: (-fastpath-disable) are the keys with "-" for "_".
OFFLOAD_PARTS = {"tun_tso": FF_F_TUN_TSO, "udp_gso": FF_F_UDP_GSO, "udp_gro": FF_F_UDP_GRO,
                 "tcp_gro": FF_F_TCP_GRO}
MAX_WORKERS = FF_MAX_WORKERS

#: Counter names, in the order of Forwarder.stats_array().
STAT_NAMES = tuple(ff_stat_names[i].decode() for i in range(FF_ST__COUNT))
#: The counters of dropped packets, one per reason (a subset of STAT_NAMES, in its order).
DROP_REASONS = STAT_NAMES[FF_ST_DROP_FIRST:FF_ST_DROP_LAST + 1]

#: Per-peer counters (docs/fastpath.md §"Per-peer counters"), in the order of PEER_DTYPE's
#: counter fields: packets are inner packets, bytes their IPv4 total length; last_rx_ns is
#: time.monotonic_ns() of the last datagram accepted from the peer (coarse), 0 = never.
PEER_STAT_NAMES = tuple(ff_peer_stat_names[i].decode() for i in range(FF_PS__COUNT))
assert len(PEER_STAT_NAMES) == 10, "ff_fwd.pxd declares ff_peer_stats.v[10]"
#: One row of Forwarder.peer_stats(): the route (host order, as ROUTE_DTYPE), then the counters.
cdef object _peer_dtype = None


def peer_dtype():
    """PEER_DTYPE (numpy is imported on the first call, as for route_dtype())."""
    global _peer_dtype
    if _peer_dtype is None:
        _peer_dtype = _np().dtype([("net", "<u4"), ("prefix", "u1"), ("peer_ip", "<u4"), ("peer_port", "<u2")]
                                  + [(name, "<u8") for name in PEER_STAT_NAMES], align=True)
    return _peer_dtype


PEER_MAX = FF_PEER_MAX                   # routes with a counter row: PEER_MAX - 1
UNKNOWN_SENDERS_MAX = FF_UNKNOWN_SENDERS # addresses kept per worker; the rest count as "other"

cdef object _peers_from_c(const ff_peer_stats *ps, long n):
    """C per-peer rows -> a PEER_DTYPE array (defined in _forwarder.pxi), in the order given."""
    np = _np()
    out = np.zeros(n, dtype=peer_dtype())
    vals = np.empty((n, len(PEER_STAT_NAMES)), dtype=np.uint64)
    cdef uint32_t[:] net = out["net"]
    cdef uint8_t[:] prefix = out["prefix"]
    cdef uint32_t[:] peer = out["peer_ip"]
    cdef uint16_t[:] port = out["peer_port"]
    cdef uint64_t[:, ::1] v = vals
    cdef long i
    cdef int k
    for i in range(n):
        net[i] = ps[i].route.net
        prefix[i] = ps[i].route.prefix
        peer[i] = ps[i].route.peer_ip
        port[i] = ps[i].route.peer_port
        for k in range(FF_PS__COUNT):
            v[i, k] = ps[i].v[k]
    for k, name in enumerate(PEER_STAT_NAMES):
        out[name] = vals[:, k]
    return out


cdef enum _State:
    NEW, OPEN, CLOSED


cdef class Forwarder:
    """TUN <-> UDP forwarder speaking flannel's udp wire format, run by 2 x workers C threads."""
    cdef ff_fwd *_fw
    cdef _State _state
    cdef bint _running
    cdef bint _duplex
    cdef int _inflight          # calls running in C without the GIL (protected by the GIL)
    cdef object _life           # serializes open/start/stop/close

    def __cinit__(self):
        self._fw = NULL
        self._state = NEW
        self._running = False
        self._inflight = 0
        self._life = _threading.Lock()

    def __dealloc__(self):
        if self._fw != NULL:
            with nogil:
                ff_fwd_close(self._fw)
            self._fw = NULL

    cdef int _alive(self) except -1:
        if self._state != OPEN:
            raise RuntimeError("Forwarder is closed" if self._state == CLOSED else "Forwarder is not open")
        return 0

    cdef int _enter(self) except -1:
        """_alive() and count a call that is about to leave the GIL; pair with _inflight -= 1."""
        self._alive()
        self._inflight += 1
        return 0

    def open(self, tun="flannel%d", *, tun_fd=None, bind_ip="0.0.0.0", port=DEFAULT_PORT,
             tun_ip="0.0.0.0", tun_prefix=0, mtu=1472, batch=DEFAULT_BATCH, anti_spoof=True, workers=1,
             offload=False, tun_tso=None, udp_gso=None, udp_gro=None, tcp_gro=None,
             duplex=False, _refuse=()):
        """Create (or adopt, with tun_fd) the TUN device and bind the UDP socket(s); no threads yet.

        offload=True turns on every offload part; each part has its own switch (None = follow
        `offload`): tun_tso (TUN IFF_VNET_HDR + TSO4, superframes split in user space), udp_gso
        (UDP_SEGMENT sends), udp_gro (UDP_GRO receive), tcp_gro (received TCP segments merged
        into GSO TUN writes; needs tun_tso). A part the kernel refuses falls back on its own;
        `features` tells what is active. The wire format is flannel's in every case.

        workers=N > 1: the TUN gets IFF_MULTI_QUEUE with N queues, N SO_REUSEPORT receive
        sockets on port and N send sockets (one outer source port per worker); worker i serves
        queue i both ways, so one inner flow stays on one thread.

        duplex=True: one thread per TUN queue runs both directions (else one thread each):
        fewer threads and wake-ups where cores are few (docs/fastpath.md §"Worker wake-ups").

        tun_ip/tun_prefix is this host's lease (tun_ip its network address, the ICMP source).
        With anti_spoof a decapsulated packet is written into the TUN only when its destination
        lies in that subnet (else counted dst_foreign) and is no special address (loopback,
        link-local, multicast, ...: dst_special, refused even with tun_prefix 0 = not given).

        mtu is the TUN's MTU as the caller sets it on the device (the agent, over netlink); it
        is only range-checked here, the buffers take any IPv4 packet.

        _refuse (a development build only, FASTFLANNEL_DEV=1): names of parts whose kernel
        call is made to fail once, to exercise the fallbacks; elsewhere it raises OSError
        (ENOTSUP).
        """
        if self._state != NEW:
            raise RuntimeError("Forwarder is closed" if self._state == CLOSED else "Forwarder is already open")
        if not 1 <= workers <= FF_MAX_WORKERS:
            raise ValueError(f"workers must be in 1..{FF_MAX_WORKERS}")
        if not 1 <= batch <= FF_MAX_BATCH:
            raise ValueError(f"batch must be in 1..{FF_MAX_BATCH}")
        if not 0 <= port <= 65535 or not 68 <= mtu <= 65535:
            raise ValueError("port or mtu out of range")
        if not 0 <= tun_prefix <= 32:
            raise ValueError("tun_prefix must be in 0..32")
        asked = {"tun_tso": tun_tso, "udp_gso": udp_gso, "udp_gro": udp_gro, "tcp_gro": tcp_gro}
        cdef uint32_t parts = 0, refuse = 0
        for name, on in asked.items():
            if on is None and offload or on:
                parts |= OFFLOAD_PARTS[name]
        for name in _refuse:
            if name not in OFFLOAD_PARTS:
                raise ValueError(f"unknown offload part {name!r}")
            refuse |= OFFLOAD_PARTS[name]
        cdef ff_opts o
        name = tun.encode() if isinstance(tun, str) else bytes(tun)
        o.tun_name = name
        o.tun_fd = -1 if tun_fd is None else int(tun_fd)
        o.bind_ip = _ip(bind_ip)
        o.port = port
        o.tun_ip = _ip(tun_ip)
        o.tun_prefix = tun_prefix
        o.batch = batch
        o.flags = (FF_F_ANTI_SPOOF if anti_spoof else 0) | (FF_F_DUPLEX if duplex else 0) | parts
        o.workers = workers
        o.refuse = refuse
        cdef ff_fwd *fw = NULL
        cdef int rc
        with self._life:
            if self._state != NEW:
                raise RuntimeError("Forwarder is closed" if self._state == CLOSED else "Forwarder is already open")
            with nogil:
                rc = ff_fwd_open(&fw, &o)
            if rc == -ENOTSUP and refuse:
                raise OSError(ENOTSUP, "open forwarder: _refuse (fault injection) needs a "
                              "development build of the fast path (FASTFLANNEL_DEV=1)")
            _check(rc, "open forwarder")
            self._fw = fw
            self._duplex = bool(duplex)
            self._state = OPEN
        return self

    @property
    def tun_name(self):
        self._alive()
        return ff_fwd_tun_name(self._fw).decode()

    @property
    def port(self):
        self._alive()
        return ff_fwd_port(self._fw)

    @property
    def workers(self):
        """Worker pairs (TUN queues)."""
        self._alive()
        return ff_fwd_workers(self._fw)

    @property
    def duplex(self):
        """One thread per TUN queue for both directions (open(duplex=True))."""
        self._alive()
        return bool(self._duplex)

    @property
    def features(self):
        """What is active now: {"tun_tso", "udp_gso", "udp_gro", "tcp_gro": bool, "workers": int}.
        A part asked for but refused by the kernel (at open, or later: EIO on a GSO send, EINVAL
        on a GSO TUN write) reads False; the counter offload_fallbacks counts those events."""
        self._alive()
        cdef uint32_t f = ff_fwd_features(self._fw)
        d = {name: bool(f & bit) for name, bit in OFFLOAD_PARTS.items()}
        d["workers"] = ff_fwd_workers(self._fw)
        return d

    @property
    def running(self):
        return self._running

    def start(self):
        """Start the worker threads (two per TUN queue, one with duplex)."""
        with self._life:
            self._alive()
            if self._running:
                raise RuntimeError("Forwarder is already running")
            _check(ff_fwd_start(self._fw), "start forwarder")
            self._running = True

    def stop(self):
        """Stop and join the workers (idempotent); counters and routes are kept."""
        with self._life:
            self._alive()
            with nogil:
                ff_fwd_stop(self._fw)
            self._running = False

    def close(self):
        """Stop, close the TUN and socket, free everything. Idempotent."""
        with self._life:
            self._state = CLOSED            # new calls fail from here on
            while self._inflight:           # route updates still inside C finish first
                _time.sleep(0.001)
            if self._fw != NULL:
                with nogil:
                    ff_fwd_close(self._fw)
                self._fw = NULL
            self._running = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_route(self, subnet, peer_ip, int peer_port=DEFAULT_PORT):
        """Route `subnet` ("10.10.16.0/20") to the peer at peer_ip:peer_port (add or update)."""
        self._alive()
        cdef ff_route r
        r.net, r.prefix = _subnet(subnet)
        r.peer_ip = _ip(peer_ip)
        if not 0 < peer_port <= 65535:
            raise ValueError("peer_port out of range")
        r.peer_port = peer_port
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = ff_fwd_add_route(self._fw, &r)
        finally:
            self._inflight -= 1
        _check(rc, "add route")

    def remove_route(self, subnet):
        """Remove the route for exactly `subnet`; KeyError if there is none."""
        self._alive()
        cdef uint32_t net
        cdef uint8_t prefix
        net, prefix = _subnet(subnet)
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = ff_fwd_remove_route(self._fw, net, prefix)
        finally:
            self._inflight -= 1
        if rc == -ENOENT:
            raise KeyError(subnet)
        _check(rc, "remove route")

    def replace_routes(self, routes):
        """Publish a whole new table: packed bytes of ROUTE_ITEMSIZE per route (pack_route), or a
        numpy array of ROUTE_DTYPE."""
        self._alive()
        cdef size_t n = 0
        cdef ff_route *r = _routes_to_c(routes, &n)
        cdef int rc
        try:
            self._enter()
            try:
                with nogil:
                    rc = ff_fwd_replace_routes(self._fw, r, n)
            finally:
                self._inflight -= 1
        finally:
            free(r)
        _check(rc, "replace routes")

    def routes(self):
        """The current table as a ROUTE_DTYPE array sorted by (net, prefix)."""
        self._alive()
        cdef long n = ff_fwd_route_count(self._fw)
        cdef ff_route *r = <ff_route *>malloc((n if n > 0 else 1) * sizeof(ff_route))
        if r == NULL:
            raise MemoryError()
        try:
            n = min(n, ff_fwd_routes(self._fw, r, n))
            return _routes_from_c(r, n)
        finally:
            free(r)

    cdef list _counters(self, int queue):
        """Counters in STAT_NAMES order: summed over workers (queue -1) or of one TUN queue."""
        cdef uint64_t *v = <uint64_t *>malloc(FF_ST__COUNT * sizeof(uint64_t))
        if v == NULL:
            raise MemoryError()
        try:
            if queue < 0:
                ff_fwd_stats(self._fw, v)
            else:
                _check(ff_fwd_queue_stats(self._fw, queue, v), "queue stats")
            return [v[i] for i in range(FF_ST__COUNT)]
        finally:
            free(v)

    def stats_array(self):
        """Counters as a uint64 numpy array in STAT_NAMES order (summed over workers)."""
        self._alive()
        return _np().array(self._counters(-1), dtype=_np().uint64)

    def stats(self):
        """Counters as a dict {name: int}."""
        self._alive()
        return dict(zip(STAT_NAMES, self._counters(-1)))

    def peer_stats(self):
        """Per-peer counters, one PEER_DTYPE row per route (table order), summed over workers.
        Read at call time: the cost grows with the routes, never with the traffic."""
        self._alive()
        cdef long n = ff_fwd_route_count(self._fw), got
        cdef size_t cap
        cdef ff_peer_stats *ps = NULL
        while True:
            cap = <size_t>(n + 16)
            ps = <ff_peer_stats *>malloc(cap * sizeof(ff_peer_stats))
            if ps == NULL:
                raise MemoryError()
            self._enter()
            try:
                with nogil:
                    got = ff_fwd_peer_stats(self._fw, ps, cap)
            finally:
                self._inflight -= 1
            if got <= <long>cap:
                break
            free(ps)                 # routes were added meanwhile: ask again with room for them
            n = got
        try:
            return _peers_from_c(ps, got)
        finally:
            free(ps)

    def unknown_senders(self):
        """Datagrams dropped as unknown_sender, by sender address: ({"192.0.2.99": n, ...},
        other), at most UNKNOWN_SENDERS_MAX addresses per worker, the rest counted in other."""
        self._alive()
        cdef ff_sender_stats out[FF_UNKNOWN_SENDERS]
        cdef uint64_t other = 0
        cdef long n = ff_fwd_unknown_senders(self._fw, out, FF_UNKNOWN_SENDERS, &other)
        return {str(_ipaddress.IPv4Address(out[i].ip)): int(out[i].packets) for i in range(n)}, int(other)

    def offload_fallbacks(self):
        """The offload_fallbacks counter by part: {"tun_tso": n, "udp_gso": ..., ...}."""
        self._alive()
        cdef uint64_t out[FF_OFFLOAD_NPARTS]
        ff_fwd_fallbacks(self._fw, out)
        return {name: int(out[i]) for i, name in enumerate(OFFLOAD_PARTS)}

    def queue_stats(self):
        """Per TUN queue (worker pair) counters: a list of {name: int}, one per worker."""
        self._alive()
        return [dict(zip(STAT_NAMES, self._counters(q))) for q in range(ff_fwd_workers(self._fw))]
