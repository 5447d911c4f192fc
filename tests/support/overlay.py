"""Two Forwarder hosts in namespaces, for the fast-path tests: the lab's hosts h1 and h2 on its
underlay bridge, a standalone Forwarder (support/node.py) on each, TCP transfers between their
TUN addresses, pcap parsing. Traffic only goes between addresses inside the namespaces the lab
made; the lab deletes them.

Programs the tests run inside the namespaces are files in support/programs/, run as
`sys.executable <path> args` (program("tcp_sink.py")).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import sys
import time
from typing import Iterator, Tuple

import pytest

from fastflannel import lab as labmod

PORT = 8285                                         # flannel's udp port
MB = 1 << 20
LEASE = {"h1": "10.10.16.0", "h2": "10.10.32.0"}   # lease IPs (subnets are /20)

SUPPORT = os.path.dirname(os.path.abspath(__file__))
NODE = os.path.join(SUPPORT, "node.py")


def program(name: str) -> str:
    """Path of a program in support/programs/."""
    path = os.path.join(SUPPORT, "programs", name)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return path


def node_cmd(cfg: dict) -> list:
    """The command line of one standalone Forwarder (support/node.py) with config cfg."""
    return [sys.executable, NODE, json.dumps(cfg)]


class Hosts:
    """Two lab hosts, h1 and h2, on the underlay; helpers to wait, run programs, move TCP data."""

    def __init__(self, lab: labmod.Lab):
        self.lab = lab
        self.h = {n: lab.add_host(n) for n in ("h1", "h2")}

    def wait_for(self, cond, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        logs = "\n".join(f"--- {n}\n" + self.lab.log(n)[-1500:]
                         for n in sorted(os.listdir(self.lab.tmp)) if n.endswith(".log"))
        pytest.fail(f"timed out waiting for {what}\n{logs}")

    def run(self, name: str, prog: str, *args: str, timeout: float = 60):
        """Run support/programs/<prog> in host `name` to its end."""
        return labmod.run(self.lab.ns_cmd(self.h[name].ns, sys.executable, program(prog), *args),
                          check=False, timeout=timeout)

    def spawn(self, name: str, prog: str, *args: str, log: str):
        """Start support/programs/<prog> in host `name`, output to the lab log `log`."""
        return self.lab.spawn(self.h[name].ns, [sys.executable, program(prog), *args], log)

    def tcp_sink(self, name: str, port: int, log: str):
        """A tcp_sink.py on host `name`'s lease IP, waited for until it listens."""
        srv = self.spawn(name, "tcp_sink.py", LEASE[name], str(port), log=log)
        self.wait_for(lambda: "listening" in self.lab.log(log), "tcp server")
        return srv

    def assert_sink_got(self, log: str, nbytes: int, seed: int) -> None:
        want = hashlib.sha256(random.Random(seed).randbytes(nbytes)).hexdigest()
        assert self.lab.log(log).split() == ["listening", str(nbytes), want]

    def tcp_transfer(self, nbytes: int, seed: int, port: int = 5001, timeout: float = 90,
                     src: str = "h1", dst: str = "h2") -> None:
        """src -> dst over the overlay; asserts the bytes arrive exactly."""
        log = f"srv{port}.log"
        srv = self.tcp_sink(dst, port, log)
        cli = self.run(src, "tcp_source.py", LEASE[dst], str(port), str(nbytes), str(seed), timeout=timeout)
        assert cli.returncode == 0, cli.stderr
        srv.wait(timeout)
        self.assert_sink_got(log, nbytes, seed)


class Overlay(Hosts):
    """Two hosts with a Forwarder each, routes to one another."""

    def __init__(self, lab: labmod.Lab, anti_spoof: bool = True, churn: bool = False,
                 offload: bool | dict = False, **node_cfg):
        """node_cfg: more support/node.py keys for both hosts (workers, udp_gso, refuse, ...)."""
        super().__init__(lab)
        peers = {"h1": "h2", "h2": "h1"}
        for name, host in self.h.items():
            other = peers[name]
            cfg = {"bind_ip": host.ip, "port": PORT, "tun_ip": LEASE[name], "anti_spoof": anti_spoof,
                   "routes": [[LEASE[other] + "/20", self.h[other].ip]], "churn": churn,
                   "churn_interval": 0.005, "stats": self.stats_path(name),
                   "offload": offload[name] if isinstance(offload, dict) else offload, **node_cfg}
            lab.spawn(host.ns, node_cmd(cfg), f"node-{name}.log")
        for name in self.h:
            self.wait_for(lambda n=name: os.path.exists(self.stats_path(n)), f"{name} forwarder up")

    def stats_path(self, name: str) -> str:
        return os.path.join(self.lab.tmp, f"stats-{name}.json")

    def stats(self, name: str) -> dict:
        for _ in range(50):
            try:
                with open(self.stats_path(name)) as f:
                    return json.load(f)
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.02)
        pytest.fail(f"no stats from {name}: {self.lab.log(f'node-{name}.log')[-2000:]}")


def parallel_transfer(hosts: Hosts, streams: int, nbytes: int, seed: int, port: int,
                      src: str = "h1", dst: str = "h2") -> None:
    """`streams` TCP connections at once, src -> dst; each must arrive byte-exact."""
    log = f"msrv{port}.log"
    srv = hosts.spawn(dst, "tcp_multi_sink.py", LEASE[dst], str(port), str(streams), log=log)
    hosts.wait_for(lambda: "listening" in hosts.lab.log(log), "tcp server")
    cli = hosts.run(src, "tcp_multi_source.py", LEASE[dst], str(port), str(streams), str(nbytes), str(seed),
                    timeout=120)
    assert cli.returncode == 0, cli.stderr
    srv.wait(120)
    want = [f"{i} {nbytes} {hashlib.sha256(random.Random(seed + i).randbytes(nbytes)).hexdigest()}"
            for i in range(streams)]
    assert hosts.lab.log(log).splitlines() == ["listening"] + want


def pcap_udp_payloads(path: str) -> Iterator[Tuple[bytes, bytes, int, int, bytes]]:
    """(src, dst, sport, dport, payload) of every Ethernet/IPv4/UDP frame in a classic pcap file."""
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data)[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(end + "I", data, off + 8)[0]
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        sport, dport, ulen = struct.unpack_from("!HHH", ip, ihl)
        yield ip[12:16], ip[16:20], sport, dport, ip[ihl + 8:ihl + ulen]
