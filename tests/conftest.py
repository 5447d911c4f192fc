"""Shared fixtures: a real etcd on loopback, and the namespace lab (root only, skipped with a reason).

Fixtures only: helpers that test modules share live in `tests/support/` (imported as `support`)
or in the lab (`fastflannel.lab`).
"""
from __future__ import annotations

import shutil
import tempfile

import pytest

from fastflannel.lab import Lab, LabError, have_netns_privileges
from fastflannel.lab.etcd import EtcdMember, EtcdServer, etcd_binary, etcdctl_binary


def _etcd_reason() -> str | None:
    try:
        etcd_binary()
        etcdctl_binary()
    except LabError as e:
        return str(e)
    return None


@pytest.fixture
def etcd_required():
    """Skips, saying why, when the etcd and etcdctl binaries are missing."""
    reason = _etcd_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def netns_required():
    reason = have_netns_privileges()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def lab(netns_required):
    """A fresh namespace lab; every namespace and process it made is removed afterwards."""
    with Lab() as L:
        yield L


@pytest.fixture
def etcd_server(etcd_required):
    """A real etcd v3 server on 127.0.0.1 (root namespace), fresh data dir; yields its endpoint URL."""
    workdir = tempfile.mkdtemp(prefix="ff-etcd-")
    server = EtcdServer(EtcdMember.local(workdir))
    try:
        try:
            server.start()
        except LabError as e:
            pytest.fail(str(e))
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def nodes(lab, tmp_path):
    """Backend driver nodes in the lab's namespaces (tests/support/kernel_nodes.py):
    `nodes("h1", "h2")` makes (once) and returns them; their drivers are stopped afterwards."""
    from support.kernel_nodes import Nodes
    made = Nodes(lab, tmp_path)
    yield made
    made.stop_all()

