"""A fastflannel cluster in a namespace Lab: one daemon per host, containers from subnet.env.

Shared by `fastflannel demo`, the integration tests and the end-to-end benchmark, so all three
exercise the same user flow: put the config with etcdctl, start `fastflannel -iface=eth0
-etcd-endpoints=...` on each host, then give containers addresses from subnet.env.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from .netns import Container, Host, Lab, read_subnet_env
from .proc import LabError, stop_process, wait_for

PREFIX = "/coreos.com/network"

# The network config of the documents this project was created from (issue 4), per backend.
SEED_BACKENDS = {
    "udp": {"Type": "udp"},
    "vxlan": {"Type": "vxlan", "VNI": 100, "Port": 8472},
    "host-gw": {"Type": "host-gw"},
}


def seed_config(backend: str) -> str:
    return json.dumps({"Network": "10.0.0.0/8", "SubnetLen": 20, "SubnetMin": "10.10.0.0",
                       "SubnetMax": "10.99.0.0", "Backend": SEED_BACKENDS[backend]})


class Cluster:
    def __init__(self, lab: Lab, config_json: Optional[str], hosts: Sequence[str] = ("h1", "h2", "h3"),
                 extra_flags: Sequence[str] = ()):
        self.lab = lab
        self.extra_flags = list(extra_flags)
        if not lab.etcd_endpoint:
            lab.start_etcd()
        if config_json is not None:
            self.put_config(config_json)
        self.hosts: Dict[str, Host] = {h: lab.add_host(h) for h in hosts}
        self.daemons: Dict[str, subprocess.Popen] = {}
        self.containers: Dict[str, Container] = {}
        self._started_ns: Dict[str, int] = {}

    # -- etcd -----------------------------------------------------------------------------------
    def put_config(self, config_json: str) -> None:
        self.lab.etcdctl("put", f"{PREFIX}/config", config_json)

    def leases(self) -> Dict[str, str]:
        out = self.lab.etcdctl("get", "--prefix", f"{PREFIX}/subnets/").stdout.splitlines()
        return {out[i].rsplit("/", 1)[-1]: out[i + 1] for i in range(0, len(out) - 1, 2)}

    # -- daemons --------------------------------------------------------------------------------
    def host_dir(self, name: str) -> str:
        d = os.path.join(self.lab.tmp, name)
        os.makedirs(d, exist_ok=True)
        return d

    def subnet_file(self, name: str) -> str:
        return os.path.join(self.host_dir(name), "subnet.env")

    def daemon_argv(self, name: str, extra: Sequence[str] = ()) -> List[str]:
        return [sys.executable, "-m", "fastflannel.agent.cli", "-iface=eth0",
                f"-etcd-endpoints={self.lab.etcd_endpoint}", f"-subnet-file={self.subnet_file(name)}",
                *self.extra_flags, *extra]

    def start(self, name: str, extra: Sequence[str] = (), env: Optional[dict] = None) -> subprocess.Popen:
        # A restarted daemon rewrites subnet.env; wait_subnet() waits for a file newer than this.
        self._started_ns[name] = time.time_ns()
        e = dict(os.environ, FASTFLANNEL_STATE_DIR=self.host_dir(name), **(env or {}))
        p = self.lab.spawn(self.hosts[name].ns, self.daemon_argv(name, extra), f"{name}.log", env=e)
        self.daemons[name] = p
        return p

    def start_all(self, extra: Sequence[str] = ()) -> None:
        for name in self.hosts:
            self.start(name, extra)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 5.0) -> Optional[int]:
        p = self.daemons.pop(name, None)
        if p is None:
            return None
        if sig == signal.SIGTERM:
            stop_process(p, timeout)
        else:
            os.killpg(p.pid, sig)
            p.wait(timeout)
        return p.returncode

    def wait_subnet(self, name: str, timeout: float = 30.0) -> Dict[str, str]:
        path = self.subnet_file(name)
        p = self.daemons.get(name)

        def ready():
            if p is not None and p.poll() is not None:
                raise LabError(f"daemon on {name} exited rc={p.returncode}:\n{self.lab.log(name + '.log')[-3000:]}")
            try:
                return os.stat(path).st_mtime_ns >= self._started_ns.get(name, 0)
            except FileNotFoundError:
                return False
        if not wait_for(ready, timeout):
            raise LabError(f"no subnet.env on {name} after {timeout}s:\n{self.lab.log(name + '.log')[-3000:]}")
        return read_subnet_env(path)

    def wait_all(self, timeout: float = 30.0) -> Dict[str, Dict[str, str]]:
        return {name: self.wait_subnet(name, timeout) for name in self.hosts}

    # -- containers -----------------------------------------------------------------------------
    def add_containers(self) -> Dict[str, Container]:
        for name, host in self.hosts.items():
            if name not in self.containers:
                self.containers[name] = self.lab.add_container(host, read_subnet_env(self.subnet_file(name)))
        return self.containers

    def ping(self, src: str, dst: str, timeout: float = 10.0) -> bool:
        """Ping container `dst` from container `src`, retrying while routes propagate."""
        a, b = self.containers[src], self.containers[dst]
        return wait_for(lambda: self.lab.sh(a.ns, f"ping -c1 -W1 {b.ip}", check=False).returncode == 0,
                        timeout, interval=0.2)

    def log(self, name: str) -> str:
        return self.lab.log(f"{name}.log")

