"""`fastflannel status`: what a running daemon is doing, at a glance (docs/architecture.md
§"Observability").

The daemon side: `collect_state(daemon)` takes one snapshot (own lease, backend and its options,
etcd endpoint and state, the peers, the data plane's counters); `status_doc()` is its JSON
(`GET /status`), `metrics.render()` its Prometheus page (`GET /metrics`).

The command side asks the daemon's unix socket, `<run dir>/fastflannel.sock` (the directory of
`-subnet-file`: `/run/flannel/fastflannel.sock` by default), or with `--url` a health port, and
prints a table, or the JSON with `--json`. The socket is the default because it is always there
(the health port is off unless `-healthz-port` is given, as in flanneld), needs no port of its
own, and only root may use it (mode 0600), while a health port answers anyone who reaches it.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from . import __version__, metrics
from .errors import StatusError
from .lease import Lease, slot_order

if TYPE_CHECKING:
    from .daemon import Daemon

SOCKET_NAME = "fastflannel.sock"
DEFAULT_SOCKET = "/run/flannel/" + SOCKET_NAME
TIMEOUT_S = 3.0


def socket_path(subnet_file: str) -> str:
    """The daemon's status socket: beside its subnet.env, in the run dir."""
    return os.path.join(os.path.dirname(os.path.abspath(subnet_file)), SOCKET_NAME)


# -- the daemon side --------------------------------------------------------------------------------
@dataclass
class State:
    """One snapshot of the daemon for /status and /metrics."""
    ready: bool = False
    started: float = 0.0                        # Unix time the daemon started
    lease: Optional[Lease] = None
    network: Optional[str] = None
    backend_type: str = ""
    backend: Dict[str, Any] = field(default_factory=dict)   # the backend's options (describe())
    peers: List[Lease] = field(default_factory=list)
    etcd: Dict[str, Any] = field(default_factory=dict)
    data: Optional[metrics.DataPlane] = None     # None: no backend yet, or it could not say


def collect_state(daemon: Daemon) -> State:
    st = State(ready=daemon.ready, started=daemon.started, etcd=metrics.ETCD.snapshot())
    run, be = daemon.running, daemon.backend
    if run is not None:
        st.lease, st.peers = run.keeper.lease, run.tracker.leases()
    if be is not None:
        st.backend_type = be.name
        st.network = str(getattr(be, "network", None) or "") or None
        describe, observe = getattr(be, "describe", None), getattr(be, "observe", None)
        st.backend = describe() if describe is not None else {}
        try:
            st.data = observe() if observe is not None else metrics.DataPlane()
        except Exception:  # noqa: BLE001 - a backend closing under a scrape: no data plane this time
            st.data = None
    return st


def _peer_rows(st: State) -> List[Dict[str, Any]]:
    """One row per peer lease (address order), with the fast path's counters of its route."""
    counted: Dict[str, Dict[str, Any]] = {}
    peers = st.data.peers if st.data is not None else None
    if peers is not None and len(peers):
        now_mono, now = time.monotonic_ns(), time.time()
        cols = {name: peers[name].tolist() for name in peers.dtype.names}
        for i, (net, prefix) in enumerate(zip(cols["net"], cols["prefix"])):
            last = cols["last_rx_ns"][i]
            counted[f"{_ip(net)}/{prefix}"] = {
                "tx_packets": cols["tx_packets"][i], "tx_bytes": cols["tx_bytes"][i],
                "rx_packets": cols["rx_packets"][i], "rx_bytes": cols["rx_bytes"][i],
                "dropped": {"send_error": cols["tx_dropped"][i], "spoofed": cols["rx_spoofed"][i],
                            "dst_special": cols["rx_dst_special"][i],
                            "dst_foreign": cols["rx_dst_foreign"][i], "other": cols["rx_dropped"][i]},
                "last_seen": now - (now_mono - last) / 1e9 if last else None}
    rows = []
    for lease in sorted(st.peers, key=lambda x: slot_order(x.slot)):
        subnet = str(lease.slot)
        row: Dict[str, Any] = {"subnet": subnet, "public_ip": str(lease.public_address),
                               **_ipv6_half(lease), "expiration": lease.expiration}
        row.update(counted.get(subnet, ()))
        rows.append(row)
    return rows


def _ipv6_half(lease: Lease) -> Dict[str, Optional[str]]:
    """A dual-stack lease's IPv6 subnet and PublicIPv6 (None for an IPv4-only lease, and for an
    IPv6-only one, whose "subnet" and "public_ip" are those already)."""
    dual = lease.ipv6_subnet is not None and lease.slot.version == 4
    return {"ipv6_subnet": str(lease.ipv6_subnet) if dual else None,
            "public_ipv6": str(lease.public_ipv6) if dual and lease.public_ipv6 is not None else None}


def _ip(n: int) -> str:
    return socket.inet_ntoa(n.to_bytes(4, "big"))


def status_doc(st: State) -> Dict[str, Any]:
    """The JSON of `GET /status` (what `fastflannel status --json` prints)."""
    d = st.data
    fast = None
    if d is not None and d.counters:
        fast = {"counters": d.counters, "drop_reasons": list(d.drop_reasons), "features": d.features,
                "fallbacks": d.fallbacks, "unknown_senders": d.unknown_senders,
                "unknown_other": d.unknown_other}
    return {
        "version": __version__, "ready": st.ready, "started": st.started,
        "lease": None if st.lease is None else {
            "subnet": str(st.lease.slot), "public_ip": str(st.lease.public_address),
            **_ipv6_half(st.lease), "expiration": st.lease.expiration},
        "network": st.network,
        "backend": dict(st.backend, type=st.backend_type) if st.backend_type else None,
        "etcd": st.etcd,
        "per_peer_counters": d is not None and d.peers is not None,
        "peers": _peer_rows(st),
        "fastpath": fast,
        "devices": d.devices if d is not None else {},
    }


# -- the command side -------------------------------------------------------------------------------
class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s


def fetch(sock: Optional[str] = None, url: Optional[str] = None, timeout: float = TIMEOUT_S) -> Dict[str, Any]:
    """The daemon's /status document, from its unix socket or a health port URL."""
    where = url or sock or DEFAULT_SOCKET
    try:
        if url:
            import urllib.parse
            u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
            conn: http.client.HTTPConnection = http.client.HTTPConnection(u.hostname or "", u.port or 80,
                                                                          timeout=timeout)
        else:
            conn = UnixHTTPConnection(where, timeout)
        try:
            conn.request("GET", "/status")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as e:
        raise StatusError(f"no fastflannel daemon answers at {where}: {_reason(e)}") from None
    if resp.status != 200:
        raise StatusError(f"{where} answered {resp.status} to /status (not fastflannel, or too old?)")
    try:
        doc = json.loads(body)
    except ValueError:
        raise StatusError(f"{where} answered /status with something that is not JSON") from None
    if not isinstance(doc, dict) or "peers" not in doc:
        raise StatusError(f"{where} answered /status without a fastflannel status")
    return doc


def _reason(e: BaseException) -> str:
    return (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__


def _bytes(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024   # type: ignore[assignment]
    return str(n)


def _count(n: Optional[int]) -> str:
    return "-" if n is None else f"{n:,}"


def _ago(t: Optional[float], now: float) -> str:
    if t is None:
        return "never"
    return _duration(max(0.0, now - t)) + " ago"


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s" if s < 10 else f"{int(s)}s"
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d{h}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _options(backend: Dict[str, Any]) -> str:
    parts = []
    for k, v in backend.items():
        if k == "type" or v is None or v == "":
            continue
        if isinstance(v, dict):
            on = [p.replace("_", "-") for p, x in v.items() if x is True]
            v = ",".join(on) if on else "off"
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        parts.append(f"{k.replace('_', '-')} {v}")
    return ", ".join(parts)


def _table(rows: Sequence[Sequence[str]], right: Sequence[int]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def format_status(doc: Dict[str, Any], now: Optional[float] = None) -> str:
    """The table `fastflannel status` prints."""
    now = time.time() if now is None else now
    lines = [f"fastflannel {doc.get('version', '?')}: {'ready' if doc.get('ready') else 'NOT READY'}"
             + (f", up {_duration(now - doc['started'])}" if doc.get("started") else "")]
    lease = doc.get("lease")
    if lease:
        exp = lease.get("expiration")
        when = "never expires" if exp is None else (
            f"expires in {_duration(exp - now)} ({time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(exp))})"
            if exp > now else "EXPIRED")
        v6 = (f"  IPv6 {lease['ipv6_subnet']}  public IPv6 {lease.get('public_ipv6') or '-'}"
              if lease.get("ipv6_subnet") else "")
        lines.append(f"lease     {lease['subnet']}  public IP {lease['public_ip']}{v6}  {when}")
    else:
        lines.append("lease     none yet")
    if doc.get("network"):
        lines.append(f"network   {doc['network']}")
    be = doc.get("backend")
    lines.append(f"backend   {be['type']}  {_options(be)}".rstrip() if be else "backend   none yet")
    e = doc.get("etcd") or {}
    lines.append(f"etcd      {e.get('endpoint') or '-'}  {e.get('state', '?')}"
                 + (f" for {_duration(now - e['since'])}" if e.get("since") else ""))
    lines += _fast_path_lines(doc.get("fastpath"))
    for dev, d in sorted((doc.get("devices") or {}).items()):
        lines.append(f"device    {dev}  rx {d['rx_packets']:,} packets ({_bytes(d['rx_bytes'])}), "
                     f"tx {d['tx_packets']:,} ({_bytes(d['tx_bytes'])}), errors {d['rx_errors'] + d['tx_errors']:,}, "
                     f"dropped rx {d['rx_dropped']:,} tx {d['tx_dropped']:,}")
    lines.append("")
    lines += _peer_lines(doc, now)
    return "\n".join(lines) + "\n"


def _fast_path_lines(fp: Optional[Dict[str, Any]]) -> List[str]:
    if not fp:
        return []
    c = fp["counters"]
    drops = {r: c.get(r, 0) for r in fp.get("drop_reasons", ()) if c.get(r, 0)}
    text = ", ".join(f"{r} {n:,}" for r, n in sorted(drops.items(), key=lambda x: -x[1]))
    out = [f"fast path sent {c.get('udp_tx_packets', 0):,} packets ({_bytes(c.get('udp_tx_bytes', 0))}), "
           f"received {c.get('udp_rx_packets', 0):,} ({_bytes(c.get('udp_rx_bytes', 0))}), "
           f"dropped {sum(drops.values()):,}" + (f": {text}" if text else "")]
    unknown = fp.get("unknown_senders") or {}
    if unknown or fp.get("unknown_other"):
        top = ", ".join(f"{ip} {n:,}" for ip, n in sorted(unknown.items(), key=lambda x: -x[1])[:5])
        more = f", others {fp['unknown_other']:,}" if fp.get("unknown_other") else ""
        out.append(f"unknown senders: {top}{more}")
    return out


def _peer_lines(doc: Dict[str, Any], now: float) -> List[str]:
    peers = doc.get("peers") or []
    if not peers:
        return ["no peers"]
    counted = doc.get("per_peer_counters")
    dual = any(p.get("ipv6_subnet") for p in peers)
    head = ["PEER SUBNET", "PUBLIC IP"] + (["IPV6 SUBNET", "PUBLIC IPV6"] if dual else []) + (
        ["TX PACKETS", "TX BYTES", "RX PACKETS", "RX BYTES", "DROPPED", "LAST SEEN"] if counted
        else ["LEASE EXPIRES"])
    rows = [head]
    for p in peers:
        row = [p["subnet"], p["public_ip"]] + ([p.get("ipv6_subnet") or "-", p.get("public_ipv6") or "-"]
                                               if dual else [])
        if counted:
            dropped = sum((p.get("dropped") or {}).values()) if "dropped" in p else None
            row += [_count(p.get("tx_packets")), _bytes(p.get("tx_bytes")), _count(p.get("rx_packets")),
                    _bytes(p.get("rx_bytes")), _count(dropped), _ago(p.get("last_seen"), now)]
        else:
            exp = p.get("expiration")
            row.append("never" if exp is None else f"in {_duration(max(0.0, exp - now))}")
        rows.append(row)
    lines = _table(rows, right=range(2, 7) if counted else ())
    if not counted:
        lines.append(f"(the {(doc.get('backend') or {}).get('type', '?')} backend forwards in the kernel, "
                     "which keeps no per-peer counters)")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="fastflannel status",
                                 description="Show what a running fastflannel daemon is doing.")
    ap.add_argument("--json", "-json", action="store_true", help="print the daemon's JSON status")
    ap.add_argument("--socket", "-socket", help=f"the daemon's status socket (default {DEFAULT_SOCKET})")
    ap.add_argument("--subnet-file", "-subnet-file",
                    help="the daemon's -subnet-file: its socket is in the same directory")
    ap.add_argument("--url", "-url", help="ask a health port instead, e.g. http://127.0.0.1:8471")
    ap.add_argument("--timeout", "-timeout", type=float, default=TIMEOUT_S, help="seconds to wait")
    args = ap.parse_args(argv)
    sock = args.socket or (socket_path(args.subnet_file) if args.subnet_file else None)
    doc = fetch(sock, args.url, args.timeout)
    sys.stdout.write(json.dumps(doc, indent=2) + "\n" if args.json else format_status(doc))
    return 0
