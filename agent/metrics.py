"""The daemon's metrics: the metric objects other modules count into, and `/metrics`
(docs/architecture.md §"Observability").

Two halves:

* The metric objects (`LEASE_EVENTS`, `REPAIRS`, `ETCD`, ...), counted into by one-line hooks
  (`metrics.REPAIRS.labels("route").inc()`). They are plain Python (a dict update under a lock):
  this module does not import prometheus_client, so a hook costs next to nothing, a daemon nobody
  scrapes never loads it (~50 ms of imports), and the CNI plugin never sees it.
* The exposition, built at scrape time only (`render(state)`): a custom collector turns the metric
  objects and what the backend's data plane says right now (`DataPlane`, from
  `Backend.observe()`) into prometheus_client metric families, serialized by
  prometheus_client's text format. The per-peer families (a few per peer: thousands of samples
  with 1,000 peers) are written by `_render_peers` in the same format, with the fast path's C
  writer, because prometheus_client's serializer takes ~5 µs a sample; tests check both give the
  same samples.

Names follow Prometheus' conventions: `fastflannel_` prefix, `_total` counters, base units
(`_bytes`, `_seconds`), `_timestamp_seconds` for Unix times.
"""
from __future__ import annotations

import ipaddress
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import __version__

if TYPE_CHECKING:
    from .status import State

LabelValues = Tuple[str, ...]


# -- the metric objects ---------------------------------------------------------------------------
class _Child:
    """One labelled series of a metric (what `labels()` returns)."""
    __slots__ = ("_metric", "_key")

    def __init__(self, metric: _Metric, key: LabelValues):
        self._metric, self._key = metric, key

    def inc(self, n: float = 1.0) -> None:
        self._metric._add(self._key, n)

    def set(self, v: float) -> None:
        self._metric._set(self._key, v)

    def observe(self, v: float) -> None:
        self._metric._observe(self._key, v)


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = (), preset: Sequence[LabelValues] = ()):
        """`preset`: label values whose series exist from the start at zero (an unlabelled
        metric always has its one series), so a rate() over them has a starting point."""
        self.name, self.doc, self.labelnames = name, doc, tuple(labels)
        self._values: Dict[LabelValues, Any] = {}
        self._lock = threading.Lock()
        for key in (preset if labels else [()]):
            self._values[tuple(key)] = self._zero()
        ALL.append(self)

    def _zero(self) -> Any:
        return 0

    def labels(self, *values: str) -> _Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: want labels {self.labelnames}, got {values}")
        return _Child(self, tuple(str(v) for v in values))

    def inc(self, n: float = 1.0) -> None:
        self._add((), n)

    def set(self, v: float) -> None:
        self._set((), v)

    def observe(self, v: float) -> None:
        self._observe((), v)

    def samples(self) -> List[Tuple[LabelValues, Any]]:
        with self._lock:
            return [(k, list(v) if isinstance(v, list) else v) for k, v in self._values.items()]

    def _add(self, key: LabelValues, n: float) -> None:
        raise TypeError(f"{self.name} is a {self.kind}")

    _set = _observe = _add


class Counter(_Metric):
    kind = "counter"

    def _add(self, key: LabelValues, n: float) -> None:
        if n < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        with self._lock:
            self._values[key] = self._values.get(key, 0) + n


class Gauge(_Metric):
    kind = "gauge"

    def _set(self, key: LabelValues, v: float) -> None:
        with self._lock:
            self._values[key] = v


class Histogram(_Metric):
    """Cumulative buckets as Prometheus keeps them: value per key = [count per bucket..., sum]."""
    kind = "histogram"

    def __init__(self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()):
        self.buckets = tuple(sorted(buckets)) + (float("inf"),)
        super().__init__(name, doc, labels)

    def _zero(self) -> Any:
        return [0] * len(self.buckets) + [0.0]

    def _observe(self, key: LabelValues, v: float) -> None:
        with self._lock:
            cells = self._values.setdefault(key, self._zero())
            for i, bound in enumerate(self.buckets):
                if v <= bound:
                    cells[i] += 1
            cells[-1] += v


ALL: List[_Metric] = []

LEASE_EVENTS = Counter(
    "fastflannel_lease_events_total", "Peer lease events the backend applied (sync: a full listing).",
    ["kind"], preset=[("added",), ("removed",), ("sync",)])
LEASE_EVENT_ERRORS = Counter(
    "fastflannel_lease_event_errors_total", "Peer lease events the backend failed to apply.", ["kind"],
    preset=[("added",), ("removed",), ("sync",)])
LEASE_APPLY_SECONDS = Histogram(
    "fastflannel_lease_event_apply_seconds",
    "From a lease event's arrival in the daemon to its change in the kernel or the fast path.",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
WATCH_RECONNECTS = Counter(
    "fastflannel_etcd_watch_reconnects_total",
    "Lease watch restarts: error (retried with back-off), moved (to another endpoint), compacted "
    "(re-listed).", ["reason"], preset=[("error",), ("moved",), ("compacted",)])
REPAIRS = Counter(
    "fastflannel_backend_repairs_total",
    "Kernel state the backend found missing and re-added (route, neighbour, fdb, device).", ["object"],
    preset=[("route",), ("neighbour",), ("fdb",), ("device",)])
IPTABLES_RESYNCS = Counter(
    "fastflannel_iptables_resyncs_total", "Times a rule set was found incomplete and rewritten.", ["rules"],
    preset=[("ip-masq",), ("forward",)])


class EtcdState:
    """The etcd endpoint in use and how the last contact with it went (for /metrics and status)."""
    STATES = ("connecting", "connected", "unreachable")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.endpoint = ""
        self.state = "connecting"
        self.since = time.time()
        self.switches = 0

    def _to(self, endpoint: Optional[str], state: str) -> None:
        with self._lock:
            if endpoint:
                self.endpoint = endpoint
            if state != self.state:
                self.state, self.since = state, time.time()

    def ok(self, endpoint: Optional[str]) -> None:
        self._to(endpoint, "connected")

    def failed(self, endpoint: Optional[str]) -> None:
        self._to(endpoint, "unreachable")

    def switched(self, endpoint: str) -> None:
        with self._lock:
            self.switches += 1
        self._to(endpoint, "connected")

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {"endpoint": self.endpoint, "state": self.state, "since": self.since,
                    "switches": self.switches}


ETCD = EtcdState()


# -- what a data plane says at scrape time -----------------------------------------------------------
@dataclass
class DataPlane:
    """A backend's data plane, read at scrape time (`Backend.observe()`); empty for host-gw."""
    counters: Dict[str, int] = field(default_factory=dict)    # the fast path's totals (STAT_NAMES)
    drop_reasons: Tuple[str, ...] = ()                          # which of them count drops
    peers: Any = None                  # the fast path's PEER_DTYPE array (per-peer counters)
    unknown_senders: Dict[str, int] = field(default_factory=dict)
    unknown_other: int = 0
    fallbacks: Dict[str, int] = field(default_factory=dict)    # offload fallbacks by part
    features: Dict[str, Any] = field(default_factory=dict)     # offload parts active, workers
    devices: Dict[str, Dict[str, int]] = field(default_factory=dict)   # link stats by device


# -- exposition (scrape time only) -----------------------------------------------------------------
# Fast-path counters with a family of their own; the drop reasons get one family, any other
# counter (one a newer fast path added) a family named after it.
_FP_TRAFFIC = {"tun_rx": ("tun", "rx"), "udp_tx": ("udp", "tx"), "udp_rx": ("udp", "rx"),
               "tun_tx": ("tun", "tx")}
_FP_SINGLE = {"icmp_sent": ("fastflannel_fastpath_icmp_sent", "ICMP net-unreachable messages sent into the TUN."),
              "tun_gso_frames": ("fastflannel_fastpath_tun_gso_frames", "TSO superframes read from the TUN."),
              "tun_gro_merged": ("fastflannel_fastpath_tun_gro_merged_packets",
                                 "Received packets merged into a larger TUN write."),
              "icmp_suppressed": ("fastflannel_fastpath_icmp_suppressed",
                                  "ICMP net-unreachable messages not sent: over the rate limit.")}
_DEVICE_STATS = (("packets", "fastflannel_device_packets", "Packets through the device"),
                 ("bytes", "fastflannel_device_bytes", "Bytes through the device"),
                 ("errors", "fastflannel_device_errors", "Device errors"),
                 ("dropped", "fastflannel_device_dropped_packets", "Packets the device dropped"))


class _Collector:
    """prometheus_client collector over one State, taken when the scrape began."""

    def __init__(self, state: State):
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
        st = self.state
        yield InfoMetricFamily("fastflannel_build", "fastflannel's version and the Python running it.",
                               value={"version": __version__, "python": platform.python_version()})
        yield GaugeMetricFamily("fastflannel_ready", "1 once subnet.env is written and the backend runs.",
                                value=1 if st.ready else 0)
        yield from self._lease(st)
        yield from self._etcd(st)
        yield from _objects()
        if st.data is not None:
            yield from _fast_path(st.data)
            yield from _devices(st.data.devices)

    @staticmethod
    def _lease(st: State) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        yield GaugeMetricFamily("fastflannel_peers", "Peer leases (other hosts' subnets) the daemon knows.",
                                value=len(st.peers))
        if st.lease is None:
            return
        info = GaugeMetricFamily("fastflannel_lease_info", "This host's lease.",
                                 labels=["subnet", "public_ip", "backend"])
        info.add_metric([str(st.lease.slot), str(st.lease.public_address), st.backend_type], 1)
        yield info
        if st.lease.expiration is not None:
            yield GaugeMetricFamily("fastflannel_lease_expiration_timestamp_seconds",
                                    "When etcd drops this host's lease unless renewed (Unix time).",
                                    value=st.lease.expiration)

    @staticmethod
    def _etcd(st: State) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        e = st.etcd
        fam = GaugeMetricFamily("fastflannel_etcd_connection_state",
                                "1 for the state of the connection to the etcd endpoint in use.",
                                labels=["endpoint", "state"])
        for s in EtcdState.STATES:
            fam.add_metric([e["endpoint"], s], 1 if e["state"] == s else 0)
        yield fam
        yield CounterMetricFamily("fastflannel_etcd_endpoint_switches", "Moves to another etcd endpoint.",
                                  value=e["switches"])


def _objects() -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString
    for m in ALL:
        if isinstance(m, Histogram):
            h = HistogramMetricFamily(m.name, m.doc, labels=list(m.labelnames))
            for key, cells in m.samples():
                buckets = [(floatToGoString(b), cells[i]) for i, b in enumerate(m.buckets)]
                h.add_metric(list(key), buckets, cells[-1])
            yield h
        else:
            c = CounterMetricFamily(m.name, m.doc, labels=list(m.labelnames))
            for key, v in m.samples():
                c.add_metric(list(key), v)
            yield c


def _fast_path(d: DataPlane) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    if not d.counters:
        return
    c = d.counters
    where = ("the fast path's view: tun rx = read from the TUN, udp tx = sent to peers, udp rx = received "
             "from peers, tun tx = written to the TUN")
    pk = CounterMetricFamily("fastflannel_fastpath_packets", f"Inner packets through the fast path ({where}).",
                             labels=["device", "direction"])
    by = CounterMetricFamily("fastflannel_fastpath_bytes", f"Bytes through the fast path ({where}).",
                             labels=["device", "direction"])
    for stem, labels in _FP_TRAFFIC.items():
        pk.add_metric(list(labels), c.get(f"{stem}_packets", 0))
        by.add_metric(list(labels), c.get(f"{stem}_bytes", 0))
    yield pk
    yield by
    drops = CounterMetricFamily("fastflannel_fastpath_dropped_packets", "Packets the fast path dropped, by reason.",
                                labels=["reason"])
    for reason in d.drop_reasons:
        drops.add_metric([reason], c.get(reason, 0))
    yield drops
    known = {f"{s}_{u}" for s in _FP_TRAFFIC for u in ("packets", "bytes")} | set(d.drop_reasons)
    known |= set(_FP_SINGLE) | {"offload_fallbacks"}
    for key, (name, doc) in _FP_SINGLE.items():
        yield CounterMetricFamily(name, doc, value=c.get(key, 0))
    for key in sorted(set(c) - known):        # a counter this module does not know yet
        yield CounterMetricFamily(f"fastflannel_fastpath_{key}", f"The fast path's {key} counter.", value=c[key])
    fb = CounterMetricFamily("fastflannel_fastpath_offload_fallbacks",
                             "Offload parts the kernel refused, by part (each then runs without it).",
                             labels=["part"])
    on = GaugeMetricFamily("fastflannel_fastpath_offload_enabled", "1 while an offload part is active.",
                           labels=["part"])
    for part, n in d.fallbacks.items():
        fb.add_metric([part], n)
        on.add_metric([part], 1 if d.features.get(part) else 0)
    yield fb
    yield on
    yield GaugeMetricFamily("fastflannel_fastpath_workers", "Fast-path worker pairs (TUN queues).",
                            value=d.features.get("workers", 1))
    unk = CounterMetricFamily("fastflannel_fastpath_unknown_sender_packets",
                              "Datagrams dropped as unknown_sender, by sender address (a bounded set; "
                              "the rest under sender=\"other\").", labels=["sender"])
    for ip, n in sorted(d.unknown_senders.items()):
        unk.add_metric([ip], n)
    unk.add_metric(["other"], d.unknown_other)
    yield unk


def _devices(devices: Dict[str, Dict[str, int]]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily
    if not devices:
        return
    for stat, name, doc in _DEVICE_STATS:
        fam = CounterMetricFamily(name, doc + " (the kernel's link statistics).", labels=["device", "direction"])
        for dev, s in sorted(devices.items()):
            for direction in ("rx", "tx"):
                fam.add_metric([dev, direction], s.get(f"{direction}_{stat}", 0))
        yield fam


# -- per-peer families, rendered directly -----------------------------------------------------------
PEER_FAMILIES = (
    # (name, type, help, [(label suffix, counter field)])
    ("fastflannel_peer_packets_total", "counter", "Inner packets sent to / accepted from a peer.",
     [('direction="tx"', "tx_packets"), ('direction="rx"', "rx_packets")]),
    ("fastflannel_peer_bytes_total", "counter", "Bytes (inner IPv4 total length) sent to / accepted from a peer.",
     [('direction="tx"', "tx_bytes"), ('direction="rx"', "rx_bytes")]),
    ("fastflannel_peer_dropped_packets_total", "counter",
     "Packets to or from a peer dropped: send_error (to it); spoofed, dst_special, dst_foreign and other "
     "(from its address; the fast path's reasons of the same names).",
     [('reason="send_error"', "tx_dropped"), ('reason="spoofed"', "rx_spoofed"),
      ('reason="dst_special"', "rx_dst_special"), ('reason="dst_foreign"', "rx_dst_foreign"),
      ('reason="other"', "rx_dropped")]),
)


# The per-series line starts of every live route, `name{subnet="...",public_ip="...",direction="tx"} `:
# made once per route (and dropped with it), so a scrape only formats the values.
_LAST_RX = "fastflannel_peer_last_receive_timestamp_seconds"
_PEER_SERIES = [(name, suffix, field) for name, _k, _d, series in PEER_FAMILIES for suffix, field in series]


class _PeerPrefixes:
    def __init__(self) -> None:
        self._cache: Dict[Tuple[int, int, int], Tuple[bytes, ...]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _make(net: int, prefix: int, ip: int) -> Tuple[bytes, ...]:
        lab = f'subnet="{ipaddress.IPv4Address(net)}/{prefix}",public_ip="{ipaddress.IPv4Address(ip)}"'
        return tuple(f"{name}{{{lab},{suffix}}} ".encode() for name, suffix, _f in _PEER_SERIES) + (
            f"{_LAST_RX}{{{lab}}} ".encode(),)

    def of(self, peers: Any) -> List[Tuple[bytes, ...]]:
        """One tuple of line starts per row of `peers` (the order of _PEER_SERIES, then last-rx)."""
        keys = list(zip(peers["net"].tolist(), peers["prefix"].tolist(), peers["peer_ip"].tolist()))
        with self._lock:
            old, new = self._cache, {}
            for k in keys:
                new[k] = old.get(k) or self._make(*k)
            self._cache = new
        return [new[k] for k in keys]


_PEER_PREFIXES = _PeerPrefixes()
_MS_PER_S_DIGITS = 3            # last-receive times: integer milliseconds, written as seconds


def _peer_heads() -> Tuple[List[bytes], List[str]]:
    """Per column of the per-peer page: the family's # HELP/# TYPE lines (b"" when it continues
    the family of the column before), and the PEER_DTYPE field it shows."""
    heads, fields = [], []
    for name, kind, doc, series in PEER_FAMILIES:
        for i, (_suffix, fieldname) in enumerate(series):
            heads.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode() if i == 0 else b"")
            fields.append(fieldname)
    heads.append(f"# HELP {_LAST_RX} When the last datagram from the peer was accepted (Unix time).\n"
                 f"# TYPE {_LAST_RX} gauge\n".encode())
    return heads, fields


_PEER_HEADS, _PEER_FIELDS = _peer_heads()
# the last column (last receive) is fixed-point milliseconds and leaves out peers never heard
_PEER_DECIMALS = [0] * (len(_PEER_HEADS) - 1) + [_MS_PER_S_DIGITS]
_PEER_SKIP_ZERO = [False] * (len(_PEER_HEADS) - 1) + [True]


def _render_peers(peers: Any) -> bytes:
    """The per-peer families in the text format: one series per live route, written by the fast
    path's series_columns() (C: 0.47 ms at 1,000 peers, where Python's formatting took 2.27;
    docs/fastpath.md §"Per-peer counters")."""
    if peers is None or len(peers) == 0:
        return b""
    import numpy as np

    from ..fastpath import series_columns
    values = np.empty((len(peers), len(_PEER_HEADS)), np.uint64)
    for col, fieldname in enumerate(_PEER_FIELDS):
        values[:, col] = peers[fieldname]
    # monotonic ns of the last datagram (0 = never) -> Unix time in ms, rows never heard left out
    rx = peers["last_rx_ns"].astype(np.int64)
    values[:, -1] = np.where(rx != 0, (rx + (time.time_ns() - time.monotonic_ns())) // 1_000_000, 0)
    return series_columns(_PEER_HEADS, _PEER_PREFIXES.of(peers), values, _PEER_DECIMALS, _PEER_SKIP_ZERO)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"     # prometheus_client's CONTENT_TYPE_LATEST


_PROCESS: List[Any] = []      # prometheus_client's process collector, made once (it reads /proc/stat)


def render(state: State) -> bytes:
    """The whole /metrics page for `state` (imports prometheus_client on the first call)."""
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
    if not _PROCESS:
        _PROCESS.append(ProcessCollector(namespace="fastflannel", registry=None))   # CPU, memory, fds
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(state))
    registry.register(_PROCESS[0])
    peers = state.data.peers if state.data is not None else None
    return generate_latest(registry) + _render_peers(peers)
