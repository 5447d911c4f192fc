"""Shared fixtures: a real etcd on loopback, and the namespace lab (root only, skipped with a reason)."""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time

import pytest

from fastflannel.agent import lab as labmod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _etcd_reason() -> str | None:
    try:
        labmod.etcd_binary()
    except labmod.LabError as e:
        return str(e)
    return None


@pytest.fixture
def netns_required():
    reason = labmod.have_netns_privileges()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def lab(netns_required):
    """A fresh namespace lab; every namespace and process it made is removed afterwards."""
    with labmod.Lab() as L:
        yield L


@pytest.fixture
def etcd_server():
    """A real etcd v3 server on 127.0.0.1 (root namespace), fresh data dir; yields its endpoint URL."""
    reason = _etcd_reason()
    if reason:
        pytest.skip(reason)
    client, peer = _free_port(), _free_port()
    data = tempfile.mkdtemp(prefix="ff-etcd-")
    url = f"http://127.0.0.1:{client}"
    log = open(os.path.join(data, "etcd.log"), "wb")
    p = subprocess.Popen([labmod.etcd_binary(), "--name", "t", "--data-dir", os.path.join(data, "d"),
                          "--listen-client-urls", url, "--advertise-client-urls", url,
                          "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                          "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                          "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
                         stdout=log, stderr=subprocess.STDOUT)
    env = dict(os.environ, ETCDCTL_API="3")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if subprocess.run([labmod.etcdctl_binary(), f"--endpoints={url}", "endpoint", "health"],
                          capture_output=True, env=env).returncode == 0:
            break
        time.sleep(0.1)
    else:
        p.kill()
        pytest.fail("etcd did not start: " + open(os.path.join(data, "etcd.log")).read()[-2000:])
    try:
        yield url
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()
        subprocess.run(["rm", "-rf", data])


def etcdctl(url: str, *args: str) -> subprocess.CompletedProcess:
    """Run etcdctl (v3 API) against a test server; used by tests to act as the admin would."""
    return subprocess.run([labmod.etcdctl_binary(), f"--endpoints={url}", *args], capture_output=True,
                          text=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=20)
