"""The command line's one error path: every operational failure is one line on stderr and an exit
status, never a traceback. In-process for the flag cases; the real daemon in a lab host (real
etcd, real kernel, real iptables lookup) for failures that happen while it starts."""
from __future__ import annotations

import os
import shutil

import pytest

from fastflannel.agent import cli
from fastflannel.lab.cluster import Cluster, seed_config


def test_help_goes_to_stderr_with_status_0(capsys):
    # flanneld (Go's flag package) prints its usage on stderr and exits 0 for -help.
    assert cli.main(["-help"]) == 0
    out, err = capsys.readouterr()
    assert "-etcd-endpoints" in err and out == ""


def test_bad_flag_is_one_line_with_status_2(capsys):
    assert cli.main(["-iface-regex"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("fastflannel: ")


def _fails_with_one_line(cluster: Cluster, name: str, *, timeout: float = 30) -> str:
    """Wait for the daemon on `name` to exit 1; return its last log line (the error line)."""
    rc = cluster.daemons[name].wait(timeout)
    log = cluster.log(name)
    assert rc == 1, log
    assert "Traceback" not in log, log
    last = log.strip().splitlines()[-1]
    assert last.startswith("fastflannel: "), log
    return last


@pytest.mark.netns
@pytest.mark.etcd
def test_missing_iptables_binary_is_one_line(lab, tmp_path):
    # A PATH with iproute2 (for `ip netns exec`) but no iptables: the forward rules cannot be set.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ip = shutil.which("ip")
    assert ip, "the lab needs iproute2"
    os.symlink(ip, bin_dir / "ip")
    cluster = Cluster(lab, seed_config("host-gw"), hosts=("h1",))
    cluster.start("h1", env={"PATH": str(bin_dir)})
    last = _fails_with_one_line(cluster, "h1")
    assert "iptables" in last and "No such file or directory" in last, last


@pytest.mark.netns
@pytest.mark.etcd
def test_netlink_refusal_is_one_line(lab):
    # The kernel refuses a second VXLAN device with the same VNI and port (EEXIST).
    cluster = Cluster(lab, seed_config("vxlan"), hosts=("h1",))
    ns = cluster.hosts["h1"].ns
    lab.sh(ns, "ip link add squat.100 type vxlan id 100 dstport 8472 dev eth0 nolearning")
    cluster.start("h1")
    last = _fails_with_one_line(cluster, "h1")
    assert "flannel.100" in last and "File exists" in last, last
