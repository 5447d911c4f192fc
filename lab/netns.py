"""A namespace lab: hosts on one underlay bridge, a local etcd, containers behind per-host bridges.

Used by `fastflannel demo`, the integration tests and the end-to-end benchmark. Every address lives
inside namespaces this module creates (underlay 192.0.2.0/24, TEST-NET-1; with `ipv6` also the
ULA fd00:2::/64 on the same links, and containers get the IPv6 subnet of subnet.env); `close()`
deletes them all, also after a failure. Requires root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .etcd import EtcdMember, EtcdServer
from .proc import LabError, run, stop_process

UNDERLAY = ipaddress.IPv4Network("192.0.2.0/24")
HUB_IP = "192.0.2.1"
UNDERLAY6 = ipaddress.IPv6Network("fd00:2::/64")    # ULA, only inside the lab's namespaces
HUB_IP6 = "fd00:2::1"
_IPV6_ON = ("sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.default.disable_ipv6=0 "
            "net.ipv6.conf.lo.disable_ipv6=0")
ETCD_PORT = 2379                 # etcd's client port, on the hub's underlay address
ETCD_PEER_PORT = 2380


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
    ip: str            # underlay address on eth0 ("" with Lab(ipv4=False))
    iface: str = "eth0"
    containers: List[str] = field(default_factory=list)
    ip6: str = ""      # IPv6 underlay address on eth0 (Lab(ipv6=True))


class Lab:
    """Context manager owning namespaces and processes; everything is torn down by close()."""

    def __init__(self, prefix: Optional[str] = None, mtu: int = 1500, ipv6: bool = False, ipv4: bool = True):
        self.prefix = prefix or f"ff{os.getpid() % 100000}"
        self.mtu = mtu
        self.ipv6 = ipv6            # give hosts an IPv6 underlay address too (set before add_host)
        # False (with ipv6): hosts get no IPv4 underlay address at all and reach etcd over IPv6
        # (an IPv6-only network, docs/flannel-compat.md §"IPv6-only"); set before start_etcd.
        self.ipv4 = ipv4
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.namespaces: List[str] = []
        self.procs: List[subprocess.Popen] = []
        self.hosts: Dict[str, Host] = {}
        self.hub = ""
        self.etcd: Optional[EtcdServer] = None
        self.etcd_endpoint = ""
        self._next_host = 10

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
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
        if self.ipv6:
            self.sh(self.hub, f"{_IPV6_ON} net.ipv6.conf.br0.disable_ipv6=0 && "
                              f"ip -6 addr add {HUB_IP6}/{UNDERLAY6.prefixlen} dev br0 nodad")
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
        if self.ipv4:
            self.sh(ns, f"ip addr add {ip}/{UNDERLAY.prefixlen} dev eth0 && ip link set eth0 up && "
                        f"ip route add default via {HUB_IP} && sysctl -qw net.ipv4.ip_forward=1")
        else:
            self.sh(ns, "ip link set eth0 up")
        host = Host(name=name, ns=ns, ip=ip if self.ipv4 else "")
        if self.ipv6:
            host.ip6 = str(UNDERLAY6.network_address + self._next_host - 1)
            self.sh(ns, f"{_IPV6_ON} net.ipv6.conf.eth0.disable_ipv6=0 net.ipv6.conf.all.forwarding=1 && "
                        f"ip -6 addr add {host.ip6}/{UNDERLAY6.prefixlen} dev eth0 nodad && "
                        f"ip -6 route add default via {HUB_IP6} dev eth0")
        self.hosts[name] = host
        return host

    # -- etcd --------------------------------------------------------------------------------
    def start_etcd(self, extra_args: Sequence[str] = ()) -> str:
        """A real etcd v3 server in the hub namespace, reachable from every host at 192.0.2.1."""
        if not self.hub:
            self.make_underlay()
        hub = HUB_IP if self.ipv4 else f"[{HUB_IP6}]"
        url = f"http://{hub}:{ETCD_PORT}"
        member = EtcdMember(name="lab", data_dir=os.path.join(self.tmp, "etcd-data"), client_url=url,
                            peer_url=f"http://{hub}:{ETCD_PEER_PORT}", netns=self.hub,
                            extra_args=tuple(extra_args), log_path=os.path.join(self.tmp, "etcd.log"))
        self.etcd = EtcdServer(member)
        self.etcd.start()
        self.etcd_endpoint = url
        return url

    def etcdctl(self, *args: str, check: bool = True, api: str = "3") -> subprocess.CompletedProcess:
        if self.etcd is None:
            raise LabError("no etcd in this lab: call start_etcd() first")
        p = self.etcd.etcdctl(*args, api=api)
        if check and p.returncode != 0:
            raise LabError(f"etcdctl {' '.join(args)} -> rc={p.returncode}: {p.stderr.strip()}")
        return p

    # -- containers --------------------------------------------------------------------------
    def add_container(self, host: Host, subnet_env: Dict[str, str], bridge: str = "cni0") -> Container:
        """A namespace behind `bridge` on `host`, addressed from subnet.env as Docker --bip does
        (an IPv6-only subnet.env, without FLANNEL_SUBNET: the IPv6 address alone)."""
        sub = ipaddress.IPv4Interface(subnet_env["FLANNEL_SUBNET"]) if "FLANNEL_SUBNET" in subnet_env else None
        mtu = int(subnet_env["FLANNEL_MTU"])
        idx = len(host.containers) + 2
        ns = self.add_ns(f"{host.name}c{idx}")
        host.containers.append(ns)
        have_bridge = self.sh(host.ns, f"ip link show {bridge}", check=False).returncode == 0
        if not have_bridge:
            addr = f"ip addr add {sub} dev {bridge} && " if sub is not None else ""
            self.sh(host.ns, f"ip link add {bridge} type bridge && {addr}ip link set {bridge} mtu {mtu} up")
        hv = f"veth{idx}"
        run(["ip", "link", "add", hv, "netns", host.ns, "mtu", str(mtu), "type", "veth",
             "peer", "name", "eth0", "netns", ns, "mtu", str(mtu)])
        self.sh(host.ns, f"ip link set {hv} master {bridge} up")
        cip = ""
        if sub is not None:
            cip = f"{sub.network.network_address + idx}"
            self.sh(ns, f"ip addr add {cip}/{sub.network.prefixlen} dev eth0 && ip link set eth0 up && "
                        f"ip route add default via {sub.ip}")
        else:
            self.sh(ns, "ip link set eth0 up")
        c = Container(ns=ns, ip=cip, host=host)
        if "FLANNEL_IPV6_SUBNET" in subnet_env:
            c.ip6 = self._add_container_ipv6(host, ns, subnet_env["FLANNEL_IPV6_SUBNET"], idx, bridge,
                                             add_bridge_addr=not have_bridge)
        return c

    def _add_container_ipv6(self, host: Host, ns: str, subnet6: str, idx: int, bridge: str,
                            add_bridge_addr: bool) -> str:
        """The container's IPv6 address in FLANNEL_IPV6_SUBNET (the bridge has its first address)."""
        sub6 = ipaddress.IPv6Interface(subnet6)
        cip6 = f"{sub6.network.network_address + idx}/{sub6.network.prefixlen}"
        if add_bridge_addr:
            self.sh(host.ns, f"{_IPV6_ON} net.ipv6.conf.{bridge}.disable_ipv6=0 && "
                             f"ip -6 addr add {sub6} dev {bridge} nodad")
        self.sh(ns, f"{_IPV6_ON} net.ipv6.conf.eth0.disable_ipv6=0 && ip -6 addr add {cip6} dev eth0 nodad && "
                    f"ip -6 route add default via {sub6.ip} dev eth0")
        return cip6.split("/")[0]


@dataclass
class Container:
    ns: str
    ip: str            # from FLANNEL_SUBNET ("" in an IPv6-only network)
    host: Host
    ip6: str = ""      # from FLANNEL_IPV6_SUBNET when subnet.env has it


def read_subnet_env(path: str) -> Dict[str, str]:
    env: Dict[str, str] = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env
