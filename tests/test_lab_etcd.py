"""The lab's one etcd launcher: a member keeps its data dir and URLs across kill and restart."""
from __future__ import annotations

import shutil
import tempfile

import pytest

from fastflannel.lab import LabError
from fastflannel.lab.etcd import EtcdMember, EtcdServer, free_port

pytestmark = pytest.mark.etcd


@pytest.fixture
def member(etcd_required):
    workdir = tempfile.mkdtemp(prefix="ff-etcd-lab-")
    server = EtcdServer(EtcdMember.local(workdir, name="m1"))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _ok(p) -> str:
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_kill_and_restart_keep_the_data_dir(member):
    url = member.start()
    assert member.running and member.healthy() and url == member.url
    _ok(member.etcdctl("put", "/k", "v1"))
    with pytest.raises(LabError, match="already running"):
        member.start()
    member.kill()                                   # as a crash: no clean shutdown
    assert not member.running and not member.healthy()
    assert member.restart() == url                  # same URLs, same data dir
    assert _ok(member.etcdctl("get", "--print-value-only", "/k")).strip() == "v1"
    member.stop()
    assert not member.running
    member.start()
    assert _ok(member.etcdctl("get", "--print-value-only", "/k")).strip() == "v1"
    assert "m1" in member.log()                     # the member's own log file


def test_a_member_that_cannot_start_is_a_lab_error(member, tmp_path):
    member.start()
    # Its peer port is taken, so it exits; its client URL is its own, so no other member can
    # answer the health probe for it.
    twin = EtcdServer(EtcdMember(name="m2", data_dir=str(tmp_path / "m2"),
                                 client_url=f"http://127.0.0.1:{free_port()}", peer_url=member.member.peer_url))
    with pytest.raises(LabError, match="did not become healthy"):
        twin.start(timeout=5)
    assert not twin.running
