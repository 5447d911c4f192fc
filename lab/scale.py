"""Scale harness (bench/scale.py, tests/test_scale.py): synthetic leases written in bulk, the
kernel's own report of route changes, our objects as the kernel dumps them, the `ip -batch` floor.

Synthetic peers: subnet i is 10.(1 + i // 256).(i % 256).0/24, PublicIP 198.18.0.0 + 2 + i on a
scale underlay (198.18.0.0/16, RFC 2544's benchmark range) that exists only as an on-link prefix of
the daemon host's eth0 inside its own namespace. No host answers these addresses and nothing sends
to them: no container traffic flows in the benchmark, host-gw routes via them and VXLAN FDB entries
towards them are only kernel state.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from ..agent import rtnl
from ..agent.lease import LeaseAttrs, encode_attrs

SCALE_UNDERLAY = ipaddress.IPv4Network("198.18.0.0/16")
SCALE_HOST_IP = "198.18.0.1"
PREFIX = "/coreos.com/network"
VNI = 1
TXN_OPS = 1000                    # etcd is started with --max-txn-ops=1000
LEASE_TTL_S = 3600


def subnet(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(((10 << 24) | ((1 + i // 256) << 16) | ((i % 256) << 8), 24))


GEN_STRIDE = 20000                # generation g of peer i (a changed lease): PublicIP moved by g * this


def public_ip(i: int, gen: int = 0) -> ipaddress.IPv4Address:
    return SCALE_UNDERLAY.network_address + 2 + i + gen * GEN_STRIDE


def mac(i: int, gen: int = 0) -> str:
    return f"0e:{gen:02x}:" + ":".join(f"{(i >> s) & 255:02x}" for s in (24, 16, 8, 0))


def lease_kv(backend: str, i: int, gen: int = 0) -> Tuple[str, bytes]:
    sn = subnet(i)
    if backend == "vxlan":
        attrs = LeaseAttrs(public_ip(i, gen), "vxlan", {"VNI": VNI, "VtepMAC": mac(i, gen)})
    elif backend == "host-gw":
        attrs = LeaseAttrs(public_ip(i, gen), "host-gw", None)
    else:
        attrs = LeaseAttrs(public_ip(i, gen))
    return f"{PREFIX}/subnets/{sn.network_address}-{sn.prefixlen}", encode_attrs(attrs)


def enter_netns(name: Optional[str], keep: Optional[int] = None) -> int:
    """Move this (only) thread into /run/netns/NAME (None: back to the fd `keep`); return the fd of
    the namespace we were in. Threads started afterwards (grpc's) inherit the namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY) if name else keep
    assert target is not None
    if libc.setns(target, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), f"setns {name}")
    if name:
        os.close(target)
    return own


class LeaseWriter:
    """One etcd client writing synthetic leases: bulk in transactions of TXN_OPS puts, or one by one."""

    def __init__(self, endpoint: str, backend: str):
        import etcd3
        host, port = endpoint.rsplit("//", 1)[1].rsplit(":", 1)
        self.client = etcd3.client(host=host, port=int(port), timeout=30)
        self.backend = backend
        self.lease_id = self.client.lease(LEASE_TTL_S).id

    def put_config(self, cfg: str) -> None:
        self.client.put(f"{PREFIX}/config", cfg)

    def bulk(self, indexes: Sequence[int], gen: int = 0, delete: Sequence[int] = ()) -> float:
        """Put these leases (generation `gen`) and delete those, in as few transactions as etcd
        allows (TXN_OPS each); monotonic time of the last reply."""
        return self.bulk_mixed([(indexes, gen)], delete)

    def bulk_mixed(self, puts: Sequence[Tuple[Sequence[int], int]], delete: Sequence[int]) -> float:
        """Several generations put and some leases deleted, all in the fewest transactions."""
        t = self.client.transactions
        ops = [t.put(*lease_kv(self.backend, i, gen), lease=self.lease_id) for idx, gen in puts for i in idx]
        ops += [t.delete(lease_kv(self.backend, i)[0]) for i in delete]
        for start in range(0, len(ops), TXN_OPS):
            self.client.transaction(compare=[], success=ops[start:start + TXN_OPS], failure=[])
        return time.monotonic()

    def put(self, i: int) -> Tuple[float, float]:
        """(monotonic, wall) time at which etcd answered with the put's revision."""
        self.client.put(*lease_kv(self.backend, i), lease=self.lease_id)
        return time.monotonic(), time.time()

    def delete(self, i: int) -> Tuple[float, float]:
        self.client.delete(lease_kv(self.backend, i)[0])
        return time.monotonic(), time.time()

    def close(self) -> None:
        self.client.close()


class RouteObserver:
    """The kernel's own report of route changes in this namespace (RTNLGRP_IPV4_ROUTE), with the
    monotonic time of the first NEWROUTE and DELROUTE seen for each peer subnet."""

    def __init__(self, rcvbuf: int = 64 << 20):
        self.sock = rtnl.open_socket(0x40, rcvbuf=rcvbuf)          # RTMGRP_IPV4_ROUTE
        self.added: Dict[int, float] = {}
        self.removed: Dict[int, float] = {}
        self.overflowed = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                buf = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                self.overflowed = True
                continue
            now = time.monotonic()
            for off, kind, _seq, end in rtnl.messages(buf):
                m = rtnl.parse(buf, off, kind, end)
                if not isinstance(m, rtnl.RouteMsg) or m.table != rtnl.RT_TABLE_MAIN or m.plen != 24:
                    continue
                (self.added if kind == rtnl.RTM_NEWROUTE else self.removed).setdefault(m.dst, now)

    def forget(self, dsts: Sequence[int]) -> None:
        for d in dsts:
            self.added.pop(d, None)
            self.removed.pop(d, None)

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.sock.close()


def wait_all(seen: Dict[int, float], dsts: Sequence[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(d in seen for d in dsts):
            return True
        time.sleep(0.002)
    return False


def kernel_state(backend: str, netns: Optional[str] = None, ext_dev: str = "eth0",
                 vx_dev: str = f"flannel.{VNI}") -> Dict[str, set]:
    """Our objects as the kernel dumps them in this namespace (or `netns`): routes (dst, gateway),
    and for vxlan neighbours (ip, mac) and FDB entries (mac, dst)."""
    req = rtnl.Requests(netns)
    try:
        dev = vx_dev if backend == "vxlan" else ext_dev
        idx = _ifindex(netns, dev)
        out: Dict[str, set] = {"routes": {(r.dst, r.gateway) for r in rtnl.dump_routes(req, oif=idx)
                                          if r.plen == 24 and r.gateway is not None}}
        if backend == "vxlan":
            out["neigh"] = {(n.dst, n.mac) for n in rtnl.dump_neighbours(req, rtnl.AF_INET, idx)
                            if n.state & rtnl.NUD_PERMANENT}
            out["fdb"] = {(n.mac, n.dst) for n in rtnl.dump_neighbours(req, rtnl.AF_BRIDGE, idx)
                          if n.dst is not None and n.mac != "00:00:00:00:00:00"}
        return out
    finally:
        req.close()


def _ifindex(netns: Optional[str], dev: str) -> int:
    if netns is None:
        return socket.if_nametoindex(dev)
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", dev], capture_output=True, text=True, check=True)
    return int(out.stdout.split(":", 1)[0])


def expected_state(backend: str, peers: Dict[int, int]) -> Dict[str, set]:
    """What the kernel must hold for these peers ({index: generation})."""
    nets = [(i, g, int(subnet(i).network_address)) for i, g in peers.items()]
    if backend == "vxlan":
        return {"routes": {(n, n) for _i, _g, n in nets}, "neigh": {(n, mac(i, g)) for i, g, n in nets},
                "fdb": {(mac(i, g), int(public_ip(i, g))) for i, g, _n in nets}}
    return {"routes": {(n, int(public_ip(i, g))) for i, g, n in nets}}


def state_diff(want: Dict[str, set], have: Dict[str, set]) -> Dict[str, Tuple[int, int]]:
    """{kind: (missing, stale)} for each kind that differs."""
    return {k: (len(want[k] - have[k]), len(have[k] - want[k])) for k in want if want[k] != have[k]}


# -- the kernel's floor: ip -batch doing the same work -------------------------------------------
def make_floor_ns(lab, name: str = "floor") -> str:
    """A namespace shaped like the daemon host: eth0 (a veth) on both underlays, flannel.1."""
    ns = lab.add_ns(name)
    sh = lambda c: subprocess.run(["ip", "-n", ns, *c.split()], check=True)  # noqa: E731
    sh("link add eth0 type veth peer name eth0p")
    sh("link set eth0p up")
    sh("addr add 192.0.2.250/24 dev eth0")
    sh(f"addr add {SCALE_HOST_IP}/{SCALE_UNDERLAY.prefixlen} dev eth0")
    sh("link set eth0 up")
    sh(f"link add flannel.{VNI} type vxlan id {VNI} local 192.0.2.250 dev eth0 nolearning dstport 8472")
    sh(f"addr add 10.0.1.0/32 dev flannel.{VNI}")
    sh(f"link set flannel.{VNI} up")
    return ns


def floor_seconds(ns: str, backend: str, indexes: Sequence[int], tmp: str) -> float:
    """Seconds `ip -batch` (and `bridge -batch` for the FDB) take to add these peers' objects."""
    ip_lines: List[str] = []
    br_lines: List[str] = []
    for i in indexes:
        sn = subnet(i)
        if backend == "vxlan":
            vtep = sn.network_address
            ip_lines.append(f"neigh replace {vtep} lladdr {mac(i)} dev flannel.{VNI} nud permanent")
            br_lines.append(f"fdb replace {mac(i)} dev flannel.{VNI} dst {public_ip(i)} self permanent")
            ip_lines.append(f"route replace {sn} via {vtep} dev flannel.{VNI} onlink proto boot")
        else:
            ip_lines.append(f"route replace {sn} via {public_ip(i)} dev eth0 proto boot")
    total = 0.0
    for tool, lines in (("ip", ip_lines), ("bridge", br_lines)):
        if not lines:
            continue
        path = os.path.join(tmp, f"{tool}.batch")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        t0 = time.monotonic()
        subprocess.run([tool, "-n", ns, "-batch", path], check=True)
        total += time.monotonic() - t0
    return total



def _range(text: str) -> Tuple[List[int], int]:
    """"A:B" or "A:B@G" -> ([A, B), G)."""
    span, _, gen = text.partition("@")
    a, b = span.split(":")
    return list(range(int(a), int(b))), int(gen or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m fastflannel.lab.scale --endpoint URL --backend B [--config JSON] [--put A:B[@G]]...
    [--delete A:B]`: one etcd client writing in transactions, run inside a lab namespace that
    reaches etcd (peers A..B-1 of generation G put, deleted)."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--backend", required=True, choices=["vxlan", "host-gw", "udp"])
    ap.add_argument("--config")
    ap.add_argument("--put", action="append", default=[])
    ap.add_argument("--delete", default="")
    args = ap.parse_args(argv)
    w = LeaseWriter(args.endpoint, args.backend)
    try:
        if args.config:
            w.put_config(args.config)
        w.bulk_mixed([_range(p) for p in args.put], _range(args.delete)[0] if args.delete else [])
    finally:
        w.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
