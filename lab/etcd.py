"""The one etcd launcher of the demo, the tests and the benchmarks: real etcd server processes.

`EtcdMember` describes one member: its name, data dir, client and peer URLs, the network namespace
it runs in (None: this process's own) and extra flags. `EtcdServer` runs one member: `start()`
(waits until `etcdctl endpoint health` answers), `stop()` (SIGTERM), `kill()` (SIGKILL),
`restart()` on the same data dir, and `etcdctl(...)` against it.

A multi-member cluster is several EtcdServers whose members share one `initial_cluster` map
(member name -> peer URL), each started with state "new" (or "existing" for a member that joins
later); every member keeps its own data dir, so stop/kill/restart work member by member.
`EtcdCluster` is such a cluster, with its members in namespaces of a Lab and the faults of a
real one: a member killed, blackholed, or partitioned from its peers.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .proc import LabError, find_binary, kill_process, stop_process, wait_for

ETCD_HINT = "install Debian's etcd-server/etcd-client (scripts/install-deps.sh)"
HEALTH_TIMEOUT_S = 20.0          # a fresh single member is healthy in well under a second
HEALTH_POLL_S = 0.1
HEALTH_PROBE_S = 2               # one health probe's own deadline (etcdctl --command-timeout)
CTL_TIMEOUT_S = 20.0
# etcd 3.4 refuses to start on architectures other than amd64 unless told this variable.
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


def etcd_binary() -> str:
    return find_binary("etcd", ETCD_HINT)


def etcdctl_binary() -> str:
    return find_binary("etcdctl", ETCD_HINT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def etcdctl(url: str, *args: str, netns: str | None = None, flags: Sequence[str] = (),
            api: str = "3", timeout: float = CTL_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run etcdctl against `url` as an administrator would (v3 API unless api="2"). Never raises
    for a failed command: callers look at returncode/stdout/stderr."""
    endpoint = f"--endpoints={url}" if api == "3" else f"--endpoint={url}"
    return subprocess.run([*ns_prefix(netns), etcdctl_binary(), endpoint, *flags, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, ETCDCTL_API=api))


@dataclass
class EtcdMember:
    name: str
    data_dir: str
    client_url: str                  # listened on and advertised; etcdctl and the health probe use it
    peer_url: str
    netns: str | None = None      # run inside this network namespace (`ip netns exec`)
    extra_args: Sequence[str] = ()   # e.g. ("--enable-v2",) or TLS server flags
    ctl_flags: Sequence[str] = ()    # etcdctl flags this member needs (client certificates)
    log_path: str = ""               # default: <data_dir>.log

    @classmethod
    def local(cls, workdir: str, name: str = "t", scheme: str = "http", **kw) -> EtcdMember:
        """A member on 127.0.0.1 (this namespace) with two free ports; data in `workdir/<name>`."""
        return cls(name=name, data_dir=os.path.join(workdir, name),
                   client_url=f"{scheme}://127.0.0.1:{free_port()}",
                   peer_url=f"http://127.0.0.1:{free_port()}", **kw)

    def argv(self, initial_cluster: Mapping[str, str], state: str = "new") -> list[str]:
        cluster = ",".join(f"{n}={u}" for n, u in initial_cluster.items())
        return [*ns_prefix(self.netns), etcd_binary(), "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", state, *self.extra_args]


@dataclass
class EtcdServer:
    """One running member. `initial_cluster` defaults to this member alone."""

    member: EtcdMember
    initial_cluster: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    state: str = "new"               # the initial-cluster-state of the last start

    def __post_init__(self) -> None:
        if not self.initial_cluster:
            self.initial_cluster = {self.member.name: self.member.peer_url}
        if not self.member.log_path:
            self.member.log_path = self.member.data_dir.rstrip("/") + ".log"

    @property
    def url(self) -> str:
        return self.member.client_url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, state: str = "new", timeout: float = HEALTH_TIMEOUT_S) -> str:
        """Start the member (its data dir is kept between starts) and wait until it is healthy."""
        self.launch(state)
        self.wait_healthy(timeout)
        return self.url

    def launch(self, state: str = "new") -> None:
        """Start the process without waiting: the members of a new cluster are healthy only
        once a quorum of them runs."""
        if self.running:
            raise LabError(f"etcd member {self.member.name} is already running")
        self.state = state
        env = dict(os.environ)
        if platform.machine() in _ARCH:
            env["ETCD_UNSUPPORTED_ARCH"] = _ARCH[platform.machine()]
        with open(self.member.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.member.argv(self.initial_cluster, state), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        if not wait_for(lambda: not self.running or self.healthy(), timeout, HEALTH_POLL_S) or not self.running:
            self.stop()
            raise LabError(f"etcd {self.member.name} did not become healthy at {self.url}:\n{self.log()[-2000:]}")

    def healthy(self) -> bool:
        """`etcdctl endpoint health` answers within HEALTH_PROBE_S seconds."""
        try:
            p = self.etcdctl("--dial-timeout=1s", f"--command-timeout={HEALTH_PROBE_S}s", "endpoint", "health",
                             timeout=HEALTH_PROBE_S + 3)
        except subprocess.TimeoutExpired:
            return False
        return p.returncode == 0

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (etcd syncs its data dir), SIGKILL after `timeout` s."""
        if self.proc is not None:
            stop_process(self.proc, timeout)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would end it."""
        if self.proc is not None:
            if self.proc.poll() is None:
                kill_process(self.proc)
            self.proc = None

    def restart(self, timeout: float = HEALTH_TIMEOUT_S) -> str:
        """Stop and start again on the same data dir and URLs (the member keeps its identity; etcd
        ignores the initial-cluster flags once the data dir exists)."""
        self.stop()
        return self.start(state=self.state, timeout=timeout)

    def etcdctl(self, *args: str, api: str = "3", timeout: float = CTL_TIMEOUT_S) -> subprocess.CompletedProcess:
        return etcdctl(self.url, *args, netns=self.member.netns, flags=self.member.ctl_flags, api=api,
                       timeout=timeout)

    def log(self) -> str:
        try:
            with open(self.member.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class EtcdCluster:
    """Members that form one cluster, each in its own network namespace on the lab's underlay,
    and the faults a real cluster sees, member by member: SIGKILL (`kill`, `restart` on the same
    data dir), a blackhole (`blackhole`: every packet dropped, no reset) and a partition from
    the peers that clients still reach (`partition`); `heal` removes the packet filters.

    It offers what the Lab asks of its etcd (`etcdctl`, `stop`), so `in_lab` makes it the lab's
    etcd; etcdctl then goes to a member that no fault was put on."""

    def __init__(self, members: Sequence[EtcdMember]):
        initial = {m.name: m.peer_url for m in members}
        self.servers: dict[str, EtcdServer] = {m.name: EtcdServer(m, dict(initial)) for m in members}
        self._rules: dict[str, list[list[str]]] = {}     # iptables rules put on each member
        self._down: set = set()                          # killed, blackholed or partitioned

    @classmethod
    def in_lab(cls, lab, size: int = 3, extra_args: Sequence[str] = ()) -> EtcdCluster:
        """`size` members, one per lab host `etcd<i>` on the underlay, started; the lab's etcd."""
        members = []
        for i in range(1, size + 1):
            host = lab.add_host(f"etcd{i}")
            members.append(EtcdMember(name=f"m{i}", data_dir=os.path.join(lab.tmp, f"etcd-m{i}"),
                                      client_url=f"http://{host.ip}:2379", peer_url=f"http://{host.ip}:2380",
                                      netns=host.ns, extra_args=tuple(extra_args)))
        cluster = cls(members)
        lab.etcd, lab.etcd_endpoint = cluster, cluster.endpoints   # Lab.close() stops it
        cluster.start()
        return cluster

    @property
    def names(self) -> list[str]:
        return list(self.servers)

    @property
    def endpoints(self) -> str:
        """The -etcd-endpoints value: every member's client URL, in member order."""
        return ",".join(s.url for s in self.servers.values())

    def url(self, name: str) -> str:
        return self.servers[name].url

    def start(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        for s in self.servers.values():
            s.launch()
        for s in self.servers.values():
            s.wait_healthy(timeout)

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()

    # -- faults ---------------------------------------------------------------------------------
    def kill(self, name: str) -> None:
        self.servers[name].kill()
        self._down.add(name)

    def restart(self, name: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Start a killed member again on its data dir and wait until it is healthy."""
        self.servers[name].start(state=self.servers[name].state, timeout=timeout)
        self._down.discard(name)

    def blackhole(self, name: str) -> None:
        """Drop every packet the member sends or receives off its loopback (no RST, no ICMP)."""
        self._filter(name, [["INPUT", "!", "-i", "lo"], ["OUTPUT", "!", "-o", "lo"]])

    def partition(self, name: str) -> None:
        """Cut the member off from its peers only: clients still reach it; it loses the quorum."""
        rules = []
        for peer, s in self.servers.items():
            if peer != name:
                ip = _host(s.member.peer_url)
                rules += [["INPUT", "-s", ip], ["OUTPUT", "-d", ip]]
        self._filter(name, rules)

    def heal(self, name: str) -> None:
        """Remove the packet filters `blackhole`/`partition` put on the member."""
        for rule in self._rules.pop(name, []):
            self._iptables(name, "-D", rule)
        self._down.discard(name)

    def _filter(self, name: str, rules: list[list[str]]) -> None:
        if self.servers[name].member.netns is None:
            raise LabError(f"etcd member {name} has no namespace of its own to filter packets in")
        for rule in rules:
            self._iptables(name, "-I", [*rule, "-j", "DROP"])
            self._rules.setdefault(name, []).append([*rule, "-j", "DROP"])
        self._down.add(name)

    def _iptables(self, name: str, op: str, rule: list[str]) -> None:
        cmd = [*ns_prefix(self.servers[name].member.netns), "iptables", "-w", op, rule[0], *rule[1:]]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=CTL_TIMEOUT_S)
        if p.returncode != 0:
            raise LabError(f"{' '.join(cmd)} -> rc={p.returncode}: {p.stderr.strip()}")

    # -- state ----------------------------------------------------------------------------------
    def statuses(self) -> dict[str, dict]:
        """`etcdctl endpoint status` of each member that answers: name -> Status JSON."""
        out = {}
        for name, s in self.servers.items():
            if name in self._down:
                continue
            p = s.etcdctl("endpoint", "status", "-w", "json", timeout=5)
            if p.returncode == 0:
                out[name] = json.loads(p.stdout)[0]["Status"]
        return out

    def leader(self) -> str | None:
        """The member every answering member names as leader, None while they disagree."""
        st = self.statuses()
        ids = {v["header"]["member_id"]: n for n, v in st.items()}
        leaders = {v.get("leader", 0) for v in st.values()}     # JSON leaves out a 0 (no leader)
        return ids.get(leaders.pop()) if len(leaders) == 1 else None

    def move_leader(self, name: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Make `name` the leader (etcdctl move-leader, sent to the current leader)."""
        if not wait_for(lambda: self.leader() is not None, timeout, HEALTH_POLL_S):
            raise LabError("the etcd cluster has no leader")
        current = self.leader()
        if current is None or current == name:
            if current is None:
                raise LabError("the etcd cluster lost its leader")
            return
        target = self.statuses()[name]["header"]["member_id"]
        p = self.servers[current].etcdctl("move-leader", f"{target:x}")
        if p.returncode != 0 or not wait_for(lambda: self.leader() == name, timeout, HEALTH_POLL_S):
            raise LabError(f"could not move the etcd leader to {name}: {p.stderr.strip()}")

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        """Every member answers and all name one leader."""
        def ok():
            return not self._down and len(self.statuses()) == len(self.servers) and self.leader()
        if not wait_for(ok, timeout, HEALTH_POLL_S):
            raise LabError(f"the etcd cluster is not healthy after {timeout}s: {self.statuses()}")

    def etcdctl(self, *args: str, api: str = "3", timeout: float = CTL_TIMEOUT_S) -> subprocess.CompletedProcess:
        """etcdctl against the first member that no fault was put on."""
        up = [s for n, s in self.servers.items() if n not in self._down]
        if not up:
            raise LabError("every etcd member is down")
        return up[0].etcdctl(*args, api=api, timeout=timeout)


def _host(url: str) -> str:
    return url.split("://", 1)[-1].rsplit(":", 1)[0]
