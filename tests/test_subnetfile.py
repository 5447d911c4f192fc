"""subnet.env: exact bytes, atomic replace, modes, and reading the previous subnet
(docs/flannel-compat.md §"subnet.env")."""
from __future__ import annotations

import os
import stat
from ipaddress import IPv4Network as N
from ipaddress import IPv6Network as N6

import pytest

from fastflannel.agent import subnetfile
from fastflannel.agent.subnetfile import (
    parse_cidr,
    read_prev_ipv6_subnet,
    read_prev_subnet,
    read_subnet_env,
    render_subnet_env,
    write_subnet_file,
)


def test_exact_bytes(tmp_path):
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, False)
    assert p.read_bytes() == (b"FLANNEL_NETWORK=10.5.0.0/16\n"
                              b"FLANNEL_SUBNET=10.5.72.1/24\n"
                              b"FLANNEL_MTU=1450\n"
                              b"FLANNEL_IPMASQ=false\n")


def test_ipmasq_true_and_small_subnet(tmp_path):
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), N("10.0.0.0/28"), N("10.0.0.4/30"), 1472, True)
    assert p.read_text() == ("FLANNEL_NETWORK=10.0.0.0/28\nFLANNEL_SUBNET=10.0.0.5/30\n"
                             "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n")


def test_mode_0644_despite_umask_and_dirs_0755(tmp_path):
    p = tmp_path / "run" / "flannel" / "subnet.env"
    old = os.umask(0o077)
    try:
        write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert stat.S_IMODE(p.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(p.parent.parent.stat().st_mode) == 0o755


def test_existing_dir_mode_untouched(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    write_subnet_file(str(d / "s.env"), N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, False)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_replace_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, False)
    old_inode = p.stat().st_ino
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        # At rename time the new content is complete in a temp file in the same directory,
        # and the target still holds the old content.
        seen.append((os.path.dirname(src), open(src).read(), open(dst).read()))
        return real_replace(src, dst)
    monkeypatch.setattr(subnetfile.os, "replace", spy)
    write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.9.0/24"), 1400, True)
    assert seen[0][0] == str(tmp_path)
    assert "FLANNEL_SUBNET=10.5.9.1/24" in seen[0][1] and "FLANNEL_SUBNET=10.5.72.1/24" in seen[0][2]
    assert p.stat().st_ino != old_inode
    assert os.listdir(tmp_path) == ["subnet.env"]


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, False)
    before = p.read_bytes()

    def boom(fd):
        raise OSError(5, "EIO")
    monkeypatch.setattr(subnetfile.os, "fsync", boom)
    with pytest.raises(OSError):
        write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.9.0/24"), 1450, False)
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["subnet.env"]


def test_render_matches_write():
    assert render_subnet_env(N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, False).count("\n") == 4


# -- reading --------------------------------------------------------------------------------------

def test_read_back_what_we_wrote(tmp_path):
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, True)
    assert read_subnet_env(str(p)) == {"FLANNEL_NETWORK": "10.5.0.0/16", "FLANNEL_SUBNET": "10.5.72.1/24",
                                       "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}
    assert read_prev_subnet(str(p)) == N("10.5.72.0/24")


def test_read_env_syntax(tmp_path):
    p = tmp_path / "x.env"
    p.write_text("# comment\n\nexport FLANNEL_SUBNET='10.5.3.1/24'\nFLANNEL_MTU = 1450 # inline\n"
                 'FLANNEL_NETWORK="10.5.0.0/16"\nnot a pair\n')
    env = read_subnet_env(str(p))
    assert env == {"FLANNEL_SUBNET": "10.5.3.1/24", "FLANNEL_MTU": "1450", "FLANNEL_NETWORK": "10.5.0.0/16"}
    assert read_prev_subnet(str(p)) == N("10.5.3.0/24")


def test_missing_file(tmp_path):
    assert read_subnet_env(str(tmp_path / "nope")) == {}
    assert read_prev_subnet(str(tmp_path / "nope")) is None


@pytest.mark.parametrize("value", ["", "garbage", "10.5.72.1", "10.5.72.1/33", "fc00::1/64", "10.5.72/24",
                                   "10.5.72.1/255.255.255.0"])
def test_garbage_previous_subnet_is_none_and_logged(tmp_path, caplog, value):
    p = tmp_path / "subnet.env"
    p.write_text(f"FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET={value}\n")
    assert read_prev_subnet(str(p)) is None
    assert "FLANNEL_SUBNET" in caplog.text


def test_no_subnet_line(tmp_path):
    p = tmp_path / "subnet.env"
    p.write_text("FLANNEL_NETWORK=10.5.0.0/16\n")
    assert read_prev_subnet(str(p)) is None


def test_unreadable_path_is_none(tmp_path):
    assert read_prev_subnet(str(tmp_path)) is None        # a directory: IsADirectoryError


def test_parse_cidr_like_go():
    assert parse_cidr("10.5.72.1/24") == N("10.5.72.0/24")
    assert parse_cidr("10.5.72.200/25") == N("10.5.72.128/25")
    with pytest.raises(ValueError):
        parse_cidr("10.5.72.1")


# -- dual-stack (flannel's WriteSubnetFile with EnableIPv6, ReadIP6CIDRFromSubnetFile) ----------------

def test_dual_stack_exact_bytes(tmp_path):
    """The two IPv6 lines follow FLANNEL_SUBNET; the subnet is its first host (IncrementIP), both
    in Go's IPv6 text."""
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, True,
                      (N6("fc00:5::/48"), N6("fc00:5:0:48::/64")))
    assert p.read_bytes() == (b"FLANNEL_NETWORK=10.5.0.0/16\n"
                              b"FLANNEL_SUBNET=10.5.72.1/24\n"
                              b"FLANNEL_IPV6_NETWORK=fc00:5::/48\n"
                              b"FLANNEL_IPV6_SUBNET=fc00:5:0:48::1/64\n"
                              b"FLANNEL_MTU=1450\n"
                              b"FLANNEL_IPMASQ=true\n")


def test_previous_ipv6_subnet_is_read_back(tmp_path):
    p = tmp_path / "subnet.env"
    write_subnet_file(str(p), N("10.5.0.0/16"), N("10.5.72.0/24"), 1450, False,
                      (N6("fc00:5::/48"), N6("fc00:5:0:48::/64")))
    assert read_prev_subnet(str(p)) == N("10.5.72.0/24")
    assert read_prev_ipv6_subnet(str(p)) == N6("fc00:5:0:48::/64")


@pytest.mark.parametrize("text", ["FLANNEL_SUBNET=10.5.72.1/24\n", "FLANNEL_IPV6_SUBNET=10.5.72.1/24\n",
                                  "FLANNEL_IPV6_SUBNET=fc00::1\n", "FLANNEL_IPV6_SUBNET=zz::1/64\n",
                                  "FLANNEL_IPV6_SUBNET=fc00::1/129\n"])
def test_previous_ipv6_subnet_absent_or_unusable_is_none(tmp_path, text):
    p = tmp_path / "subnet.env"
    p.write_text(text)
    assert read_prev_ipv6_subnet(str(p)) is None
