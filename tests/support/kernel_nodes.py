"""Backend driver nodes for the kernel tests (tests/test_backends_kernel.py,
tests/test_lease_policy_kernel.py): a Lab host namespace plus a driver process
(support/programs/kernel_backend.py) holding one backend object, fed JSON commands, so backend
state survives between steps as in the daemon. The `nodes` fixture (tests/conftest.py) makes them.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys

NETWORK = "10.0.0.0/8"
VX_CFG = {"Type": "vxlan", "VNI": 100, "Port": 8472}
SUBNETS = {"h1": "10.10.0.0/20", "h2": "10.10.16.0/20", "h3": "10.10.32.0/20"}
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs", "kernel_backend.py")


class Node:
    """One host namespace plus a driver process holding one backend object."""

    def __init__(self, lab, name: str, tmp_path):
        self.lab = lab
        self.host = lab.hosts.get(name) or lab.add_host(name)
        self.ns, self.ip, self.name = self.host.ns, self.host.ip, name
        self.subnet = ipaddress.ip_network(SUBNETS[name])
        self.state_dir = str(tmp_path / f"state-{name}")
        self.proc = None
        self.attrs = None

    def start(self, kind: str = "vxlan", cfg=None, public_ip=None, state_dir=None):
        self.stop()
        self.proc = subprocess.Popen(self.lab.ns_cmd(self.ns, sys.executable, DRIVER),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        res = self.call("new", kind=kind, cfg=VX_CFG if cfg is None else cfg, public_ip=public_ip,
                        state_dir=state_dir or self.state_dir)
        self.attrs = json.loads(res["attrs"])
        self.mtu = res["mtu"]
        return res

    def call(self, op: str, **kw):
        self.proc.stdin.write(json.dumps(dict(op=op, **kw)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise AssertionError(f"driver on {self.name} died: {self.proc.stderr.read()}")
        res = json.loads(line)
        if "error" in res:
            raise AssertionError(f"{op} on {self.name}: {res['error']}")
        return res

    def lease(self):
        return {"subnet": str(self.subnet), "ip": self.attrs["PublicIP"], "type": self.attrs.get("BackendType"),
                "data": self.attrs.get("BackendData")}

    def lease_of(self, backend_type: str):
        """This node's lease as a peer would see it after switching to `backend_type`."""
        data = {"VNI": 100, "VtepMAC": "0a:00:00:00:00:16"} if backend_type == "vxlan" else None
        return {"subnet": str(self.subnet), "ip": self.ip, "type": backend_type, "data": data}

    def setup(self):
        return self.call("setup", lease=self.lease(), network=NETWORK)

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.proc = None
        return err

    def sh(self, script: str, check: bool = True) -> str:
        return self.lab.sh(self.ns, script, check=check).stdout


class Nodes:
    """Makes each named Node once (`nodes("h1", "h2")` -> [Node, Node]); stop_all() at the end."""

    def __init__(self, lab, tmp_path):
        self.lab, self.tmp_path, self.made = lab, tmp_path, {}

    def __call__(self, *names):
        out = []
        for n in names:
            if n not in self.made:
                self.made[n] = Node(self.lab, n, self.tmp_path)
            out.append(self.made[n])
        return out

    def stop_all(self) -> None:
        for n in self.made.values():
            n.stop()


def ping(node, dst: str, src: str = None, count: int = 2) -> bool:
    opt = f"-I {src} " if src else ""
    return node.lab.sh(node.ns, f"ping -n -q -c {count} -W 1 -i 0.2 {opt}{dst}", check=False).returncode == 0


def assert_peer_state(node, peer, dev="flannel.100"):
    mac = peer.attrs["BackendData"]["VtepMAC"]
    vtep = str(peer.subnet.network_address)
    neigh = node.sh(f"ip neigh show dev {dev}")
    assert re.search(rf"^{re.escape(vtep)} lladdr {mac} PERMANENT", neigh, re.M), neigh
    fdb = node.sh(f"bridge fdb show dev {dev}")
    assert re.search(rf"^{mac} dst {re.escape(peer.ip)} self permanent", fdb, re.M), fdb
    routes = node.sh(f"ip route show {peer.subnet}")
    route = rf"^{re.escape(str(peer.subnet))} via {re.escape(vtep)} dev {re.escape(dev)} .*onlink"
    assert re.search(route, routes, re.M), routes


def assert_no_peer_state(node, peer, dev="flannel.100"):
    mac = peer.attrs["BackendData"]["VtepMAC"]
    assert str(peer.subnet.network_address) + " " not in node.sh(f"ip neigh show dev {dev}")
    assert mac not in node.sh(f"bridge fdb show dev {dev}")
    assert node.sh(f"ip route show {peer.subnet}").strip() == ""


# -- vxlan -------------------------------------------------------------------------------------
