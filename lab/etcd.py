"""The one etcd launcher of the demo, the tests and the benchmarks: real etcd server processes.

`EtcdMember` describes one member: its name, data dir, client and peer URLs, the network namespace
it runs in (None: this process's own) and extra flags. `EtcdServer` runs one member: `start()`
(waits until `etcdctl endpoint health` answers), `stop()` (SIGTERM), `kill()` (SIGKILL),
`restart()` on the same data dir, and `etcdctl(...)` against it.

A multi-member cluster is several EtcdServers whose members share one `initial_cluster` map
(member name -> peer URL), each started with state "new" (or "existing" for a member that joins
later); every member keeps its own data dir, so stop/kill/restart work member by member.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

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


def ns_prefix(netns: Optional[str]) -> List[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def etcdctl(url: str, *args: str, netns: Optional[str] = None, flags: Sequence[str] = (),
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
    netns: Optional[str] = None      # run inside this network namespace (`ip netns exec`)
    extra_args: Sequence[str] = ()   # e.g. ("--enable-v2",) or TLS server flags
    ctl_flags: Sequence[str] = ()    # etcdctl flags this member needs (client certificates)
    log_path: str = ""               # default: <data_dir>.log

    @classmethod
    def local(cls, workdir: str, name: str = "t", scheme: str = "http", **kw) -> EtcdMember:
        """A member on 127.0.0.1 (this namespace) with two free ports; data in `workdir/<name>`."""
        return cls(name=name, data_dir=os.path.join(workdir, name),
                   client_url=f"{scheme}://127.0.0.1:{free_port()}",
                   peer_url=f"http://127.0.0.1:{free_port()}", **kw)

    def argv(self, initial_cluster: Mapping[str, str], state: str = "new") -> List[str]:
        cluster = ",".join(f"{n}={u}" for n, u in initial_cluster.items())
        return [*ns_prefix(self.netns), etcd_binary(), "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-state", state, *self.extra_args]


@dataclass
class EtcdServer:
    """One running member. `initial_cluster` defaults to this member alone."""

    member: EtcdMember
    initial_cluster: Dict[str, str] = field(default_factory=dict)
    proc: Optional[subprocess.Popen] = None
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
        if not wait_for(lambda: not self.running or self.healthy(), timeout, HEALTH_POLL_S) or not self.running:
            self.stop()
            raise LabError(f"etcd {self.member.name} did not become healthy at {self.url}:\n{self.log()[-2000:]}")
        return self.url

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
