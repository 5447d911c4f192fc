"""contrib/systemd: the unit passes `systemd-analyze verify` with no complaint, says what flanneld's
distribution units say, and its environment file is flags fastflannel accepts."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest

from fastflannel.agent.flags import parse_flags
from fastflannel.agent.subnetfile import read_subnet_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "contrib", "systemd", "fastflannel.service")
ENV_FILE = os.path.join(ROOT, "contrib", "systemd", "fastflannel.env")
SYSTEM_UNITS = "/usr/lib/systemd/system"


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False, comment_prefixes=("#", ";"))
    cp.optionxform = str               # keys are case-sensitive
    with open(UNIT) as f:
        cp.read_file(f)
    return cp


@pytest.fixture
def analyze_root(tmp_path):
    """A file system root for `systemd-analyze verify --root`: the system's own unit files (the
    targets ours refers to) and a stand-in for the executable at the unit's path, so verify
    checks our unit and not whether this machine has fastflannel in /opt."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("needs systemd-analyze (Debian package systemd; scripts/install-deps.sh)")
    if not os.path.isdir(SYSTEM_UNITS):
        pytest.skip(f"needs the system's unit files in {SYSTEM_UNITS} (Debian package systemd)")
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.lstrip("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    exe = _unit()["Service"]["ExecStart"].split()[0]
    stub = root / exe.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    return root


def _verify(root, unit_text: str, name: str = "fastflannel.service") -> subprocess.CompletedProcess:
    (root / "etc/systemd/system" / name).write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", "--generators=no",
                           name], capture_output=True, text=True, timeout=60, cwd=str(root))


def test_unit_verifies_cleanly(analyze_root):
    with open(UNIT) as f:
        p = _verify(analyze_root, f.read())
    assert (p.returncode, p.stdout + p.stderr) == (0, "")


def test_verify_catches_a_broken_unit(analyze_root):
    """The check above can fail: a mistyped value is reported."""
    with open(UNIT) as f:
        text = f.read().replace("Type=notify", "Type=notfy")
    p = _verify(analyze_root, text, "broken.service")
    assert "Failed to parse service type" in p.stdout + p.stderr


def test_unit_is_a_flanneld_style_notify_service():
    svc, unit = _unit()["Service"], _unit()["Unit"]
    assert svc["Type"] == "notify"
    assert svc["Restart"] == "on-failure"
    assert svc["EnvironmentFile"] == "/etc/default/fastflannel"
    assert "docker.service" in unit["Before"].split()
    assert set(svc["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert int(svc["WatchdogSec"]) > 0
    assert "docker-opts -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker" in svc["ExecStartPost"]


def test_environment_file_holds_flags_the_daemon_accepts():
    env = read_subnet_env(ENV_FILE)                       # KEY=VALUE, as systemd reads it
    opts = parse_flags([], env)
    assert opts.etcd_endpoints == ["http://127.0.0.1:2379"]
    assert opts.ip_masq is True
    assert set(opts.set_from_env) == {"etcd-endpoints", "etcd-prefix", "ip-masq"}
