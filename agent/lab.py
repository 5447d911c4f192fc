"""A namespace lab: hosts on one underlay bridge, a local etcd, containers behind per-host bridges.

Used by `fastflannel demo`, the integration tests and the end-to-end benchmark. Every address lives
inside namespaces this module creates (underlay 192.0.2.0/24, TEST-NET-1); `close()` deletes them
all, also after a failure. Requires root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

UNDERLAY = ipaddress.IPv4Network("192.0.2.0/24")
HUB_IP = "192.0.2.1"
ETCD_PORT = 2379

class LabError(RuntimeError):
    pass


def run(cmd: Sequence[str], check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> rc={p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def have_netns_privileges() -> Optional[str]:
    """None when this process can build namespaces, else the reason it cannot (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2 (`ip`)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def cleanup_stale(prefix: str) -> None:
    """Delete namespaces left by a crashed earlier run with this prefix."""
    out = run(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix):
            run(["ip", "netns", "del", name], check=False)


@dataclass
class Host:
    name: str          # logical name, e.g. "h1"
    ns: str            # namespace name
    ip: str            # underlay address on eth0
    iface: str = "eth0"
    containers: List[str] = field(default_factory=list)


class Lab:
    """Context manager owning namespaces and processes; everything is torn down by close()."""

    def __init__(self, prefix: Optional[str] = None, mtu: int = 1500):
        self.prefix = prefix or f"ff{os.getpid() % 100000}"
        self.mtu = mtu
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.namespaces: List[str] = []
        self.procs: List[subprocess.Popen] = []
        self.hosts: Dict[str, Host] = {}
        self.hub = ""
        self.etcd_endpoint = ""
        self._next_host = 10

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            # Kill anything still running inside (e.g. a daemon a test started by hand).
            pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- namespaces --------------------------------------------------------------------------
    def add_ns(self, suffix: str) -> str:
        ns = f"{self.prefix}-{suffix}"
        run(["ip", "netns", "del", ns], check=False)
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        self.sh(ns, "ip link set lo up")
        return ns

    def ns_cmd(self, ns: str, *argv: str) -> List[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def sh(self, ns: str, script: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return run(self.ns_cmd(ns, "sh", "-c", script), check=check, timeout=timeout)

    def spawn(self, ns: str, argv: Sequence[str], log_name: str, env: Optional[dict] = None) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, log_name), "ab")
        p = subprocess.Popen(self.ns_cmd(ns, *argv), stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        p.log_path = os.path.join(self.tmp, log_name)  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def log(self, log_name: str) -> str:
        try:
            with open(os.path.join(self.tmp, log_name), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- underlay ----------------------------------------------------------------------------
    def make_underlay(self) -> str:
        """A hub namespace with bridge br0 (192.0.2.1/24); hosts plug into it with veth pairs."""
        self.hub = self.add_ns("hub")
        self.sh(self.hub, f"ip link add br0 type bridge && ip link set br0 mtu {self.mtu} up && "
                          f"ip addr add {HUB_IP}/{UNDERLAY.prefixlen} dev br0")
        return self.hub

    def add_host(self, name: str) -> Host:
        if not self.hub:
            self.make_underlay()
        ip = str(UNDERLAY.network_address + self._next_host)
        self._next_host += 1
        ns = self.add_ns(name)
        peer = f"{self.prefix[-6:]}{name}"[:15]
        run(["ip", "link", "add", "eth0", "netns", ns, "mtu", str(self.mtu), "type", "veth",
             "peer", "name", peer, "netns", self.hub, "mtu", str(self.mtu)])
        self.sh(self.hub, f"ip link set {peer} master br0 up")
        self.sh(ns, f"ip addr add {ip}/{UNDERLAY.prefixlen} dev eth0 && ip link set eth0 up && "
                    f"ip route add default via {HUB_IP} && sysctl -qw net.ipv4.ip_forward=1")
        host = Host(name=name, ns=ns, ip=ip)
        self.hosts[name] = host
        return host

    # -- etcd --------------------------------------------------------------------------------
    def start_etcd(self, extra_args: Sequence[str] = ()) -> str:
        """A real etcd v3 server in the hub namespace, reachable from every host at 192.0.2.1."""
        if not self.hub:
            self.make_underlay()
        data = os.path.join(self.tmp, "etcd-data")
        url = f"http://{HUB_IP}:{ETCD_PORT}"
        argv = [etcd_binary(), "--name", "lab", "--data-dir", data,
                "--listen-client-urls", f"{url},http://127.0.0.1:{ETCD_PORT}",
                "--advertise-client-urls", url,
                "--listen-peer-urls", "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "lab=http://127.0.0.1:2380", *extra_args]
        self.spawn(self.hub, argv, "etcd.log", env=dict(os.environ, ETCD_UNSUPPORTED_ARCH="amd64"))
        self.etcd_endpoint = url
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.etcdctl("endpoint", "health", check=False).returncode == 0:
                return url
            time.sleep(0.2)
        raise LabError("etcd did not become healthy:\n" + self.log("etcd.log")[-2000:])

    def etcdctl(self, *args: str, check: bool = True, api: str = "3") -> subprocess.CompletedProcess:
        flag = "--endpoints" if api == "3" else "--endpoint"
        return run(self.ns_cmd(self.hub, etcdctl_binary(), f"{flag}=http://127.0.0.1:{ETCD_PORT}",
                               *args), check=check, env=dict(os.environ, ETCDCTL_API=api))

    # -- containers --------------------------------------------------------------------------
    def add_container(self, host: Host, subnet_env: Dict[str, str], bridge: str = "cni0") -> "Container":
        """A namespace behind `bridge` on `host`, addressed from subnet.env as Docker --bip does."""
        sub = ipaddress.IPv4Interface(subnet_env["FLANNEL_SUBNET"])   # e.g. 10.10.16.1/20
        mtu = int(subnet_env["FLANNEL_MTU"])
        idx = len(host.containers) + 2
        cip = f"{sub.network.network_address + idx}/{sub.network.prefixlen}"
        ns = self.add_ns(f"{host.name}c{idx}")
        host.containers.append(ns)
        have_bridge = self.sh(host.ns, f"ip link show {bridge}", check=False).returncode == 0
        if not have_bridge:
            self.sh(host.ns, f"ip link add {bridge} type bridge && ip addr add {sub} dev {bridge} && "
                             f"ip link set {bridge} mtu {mtu} up")
        hv = f"veth{idx}"
        run(["ip", "link", "add", hv, "netns", host.ns, "mtu", str(mtu), "type", "veth",
             "peer", "name", "eth0", "netns", ns, "mtu", str(mtu)])
        self.sh(host.ns, f"ip link set {hv} master {bridge} up")
        self.sh(ns, f"ip addr add {cip} dev eth0 && ip link set eth0 up && "
                    f"ip route add default via {sub.ip}")
        return Container(ns=ns, ip=cip.split("/")[0], host=host)


@dataclass
class Container:
    ns: str
    ip: str
    host: Host


def read_subnet_env(path: str) -> Dict[str, str]:
    env: Dict[str, str] = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


def stop_process(p: subprocess.Popen, timeout: float = 5) -> None:
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout)


def _find_binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    raise LabError(f"{name} not found: install Debian's etcd-server/etcd-client (scripts/install-deps.sh)")


def etcd_binary() -> str:
    return _find_binary("etcd")


def etcdctl_binary() -> str:
    return _find_binary("etcdctl")


_SINK = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(float(sys.argv[3]))
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[3])); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

_SOURCE = r"""
import hashlib, random, socket, sys, time
n = int(sys.argv[3]); rnd = random.Random(n); h = hashlib.sha256(); sent = 0
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
t0 = time.monotonic()
while sent < n:
    b = rnd.randbytes(min(1 << 16, n - sent)); c.sendall(b); h.update(b); sent += len(b)
c.shutdown(socket.SHUT_WR); c.recv(1); dt = time.monotonic() - t0
print(sent, h.hexdigest(), f"{dt:.6f}", flush=True)
"""


def tcp_transfer(lab: "Lab", src_ns: str, dst_ns: str, dst_ip: str, nbytes: int, port: int = 5201,
                 timeout: float = 30.0) -> dict:
    """Send `nbytes` of seeded random data over TCP and compare SHA-256 on both ends.

    Returns {"ok", "bytes", "seconds", "mbit_s"}; both sides are bounded by `timeout`.
    """
    import sys
    sink = subprocess.Popen(lab.ns_cmd(dst_ns, sys.executable, "-c", _SINK, dst_ip, str(port), str(timeout)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = sink.stdout.readline()
        if "listening" not in first:
            raise LabError(f"sink did not start: {sink.stderr.read()}")
        src = run(lab.ns_cmd(src_ns, sys.executable, "-c", _SOURCE, dst_ip, str(port), str(nbytes),
                             str(timeout)), check=False, timeout=timeout + 5)
        out, _ = sink.communicate(timeout=timeout + 5)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    if src.returncode != 0:
        return {"ok": False, "error": src.stderr.strip()[-300:], "bytes": 0, "seconds": 0.0, "mbit_s": 0.0}
    sent_n, sent_h, secs = src.stdout.split()
    got = out.split()
    ok = len(got) == 2 and got[0] == sent_n and got[1] == sent_h
    secs_f = float(secs)
    return {"ok": ok, "bytes": int(sent_n), "seconds": secs_f,
            "mbit_s": int(sent_n) * 8 / 1e6 / secs_f if secs_f > 0 else 0.0}


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
