"""`fastflannel docker-opts` against the bytes flannel's dist/mk-docker-opts.sh (v0.20.2, run by
/bin/sh) writes for the same subnet.env, flags and environment.

The expected outputs were derived from the script's text (its getopts loop, the DOCKER_OPT_*
assignments, `set | grep DOCKER_OPT_` listing them sorted, the `echo` lines) and checked against
the script itself, run outside this repository; the script is not part of it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fastflannel.agent import dockeropts

FLANNEL_ENV = ("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.10.16.1/20\n"
               "FLANNEL_MTU=1472\nFLANNEL_IPMASQ={masq}\n")
NO_MASQ = FLANNEL_ENV.format(masq="false")
MASQ = FLANNEL_ENV.format(masq="true")

# name, subnet.env text (None: no file), flags (FENV/DENV stand for the paths), environment,
# expected output file
CASES = [
    ("defaults", NO_MASQ, [], {},
     'DOCKER_OPT_BIP="--bip=10.10.16.1/20"\n'
     'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
     'DOCKER_OPT_MTU="--mtu=1472"\n'
     'DOCKER_OPTS=" --bip=10.10.16.1/20 --ip-masq=true --mtu=1472"\n'),
    ("flannel-masquerades", MASQ, [], {},
     'DOCKER_OPT_BIP="--bip=10.10.16.1/20"\n'
     'DOCKER_OPT_IPMASQ="--ip-masq=false"\n'
     'DOCKER_OPT_MTU="--mtu=1472"\n'
     'DOCKER_OPTS=" --bip=10.10.16.1/20 --ip-masq=false --mtu=1472"\n'),
    ("individual-only", NO_MASQ, ["-i"], {},
     'DOCKER_OPT_BIP="--bip=10.10.16.1/20"\n'
     'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
     'DOCKER_OPT_MTU="--mtu=1472"\n'),
    ("combined-only", NO_MASQ, ["-c"], {},
     'DOCKER_OPTS=" --bip=10.10.16.1/20 --ip-masq=true --mtu=1472"\n'),
    ("no-ipmasq", MASQ, ["-m"], {},
     'DOCKER_OPT_BIP="--bip=10.10.16.1/20"\n'
     'DOCKER_OPT_MTU="--mtu=1472"\n'
     'DOCKER_OPTS=" --bip=10.10.16.1/20 --mtu=1472"\n'),
    ("distribution-unit", MASQ, ["-k", "DOCKER_NETWORK_OPTIONS", "-d", "DENV"], {},
     'DOCKER_OPT_BIP="--bip=10.10.16.1/20"\n'
     'DOCKER_OPT_IPMASQ="--ip-masq=false"\n'
     'DOCKER_OPT_MTU="--mtu=1472"\n'
     'DOCKER_NETWORK_OPTIONS=" --bip=10.10.16.1/20 --ip-masq=false --mtu=1472"\n'),
    ("key-combined", NO_MASQ, ["-k", "DOCKER_NETWORK_OPTIONS", "-c"], {},
     'DOCKER_NETWORK_OPTIONS=" --bip=10.10.16.1/20 --ip-masq=true --mtu=1472"\n'),
    ("key-starts-from-environment", NO_MASQ, ["-c", "-k", "DOCKER_NETWORK_OPTIONS"],
     {"DOCKER_NETWORK_OPTIONS": "--dns=192.0.2.53"},
     'DOCKER_NETWORK_OPTIONS="--dns=192.0.2.53  --bip=10.10.16.1/20 --ip-masq=true --mtu=1472"\n'),
    ("extra-option-from-environment", NO_MASQ, [], {"DOCKER_OPT_DNS": "--dns=192.0.2.53"},
     'DOCKER_OPT_BIP="--bip=10.10.16.1/20"\n'
     'DOCKER_OPT_DNS="--dns=192.0.2.53"\n'
     'DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
     'DOCKER_OPT_MTU="--mtu=1472"\n'
     'DOCKER_OPTS=" --bip=10.10.16.1/20 --dns=192.0.2.53 --ip-masq=true --mtu=1472"\n'),
    ("grouped-and-attached-flags", MASQ, ["-icm", "-fFENV", "-dDENV"], {},
     'DOCKER_OPT_BIP="--bip=10.10.16.1/20"\n'
     'DOCKER_OPT_MTU="--mtu=1472"\n'
     'DOCKER_OPTS=" --bip=10.10.16.1/20 --mtu=1472"\n'),
    ("no-subnet-file", None, [], {}, 'DOCKER_OPTS=""\n'),
    ("subnet-only", "FLANNEL_SUBNET=10.10.16.1/20\n", ["-i"], {},
     'DOCKER_OPT_BIP="--bip=10.10.16.1/20"\n'),
    ("bad-ipmasq-ignored-with-m", FLANNEL_ENV.format(masq="yes"), ["-m", "-c"], {},
     'DOCKER_OPTS=" --bip=10.10.16.1/20 --mtu=1472"\n'),
    ("flags-end-at-a-word", NO_MASQ, ["-c", "extra", "-i"], {},
     'DOCKER_OPTS=" --bip=10.10.16.1/20 --ip-masq=true --mtu=1472"\n'),
]


def _argv(flags, fenv, denv, explicit_paths=True):
    argv = [f.replace("FENV", fenv).replace("DENV", denv) for f in flags]
    joined = " ".join(flags)
    if explicit_paths and "FENV" not in joined:
        argv = ["-f", fenv] + argv
    if explicit_paths and "DENV" not in joined:
        argv = ["-d", denv] + argv
    return argv


def _paths(tmp_path, subnet_env):
    fenv = str(tmp_path / "subnet.env")
    if subnet_env is not None:
        with open(fenv, "w") as f:
            f.write(subnet_env)
    return fenv, str(tmp_path / "docker_opts.env")


@pytest.mark.parametrize("name, subnet_env, flags, environ, expected", CASES, ids=[c[0] for c in CASES])
def test_output_matches_mk_docker_opts(tmp_path, monkeypatch, name, subnet_env, flags, environ, expected):
    monkeypatch.setattr(dockeropts, "_route_table", lambda: "")
    fenv, denv = _paths(tmp_path, subnet_env)
    dockeropts.run(_argv(flags, fenv, denv), environ)
    with open(denv, "rb") as f:
        assert f.read() == expected.encode()


def test_invalid_ipmasq_fails_and_leaves_the_file_alone(tmp_path, capsys):
    fenv, denv = _paths(tmp_path, FLANNEL_ENV.format(masq="yes"))
    with open(denv, "w") as f:
        f.write("OLD=1\n")
    assert dockeropts.main(["-f", fenv, "-d", denv]) == 1
    assert capsys.readouterr().err == "Invalid value of FLANNEL_IPMASQ: yes\n"
    with open(denv) as f:
        assert f.read() == "OLD=1\n"


@pytest.mark.parametrize("argv, message", [
    (["-h"], ""), (["-x"], "Illegal option -x"), (["-f"], "No arg for -f option"),
    (["-k", "BAD-NAME"], "not a variable name"),
])
def test_usage_errors_exit_1_with_the_usage(tmp_path, capsys, argv, message):
    assert dockeropts.main(argv + ["-d", str(tmp_path / "out")] if argv != ["-f"] else argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Generate Docker daemon options based on flannel env file" in err
    if argv != ["-h"]:
        assert not os.path.exists(tmp_path / "out")


ROUTES = ("default via 192.0.2.1 dev eth0\n"
          "10.0.0.0/8 dev flannel0\n"
          "10.10.32.0/20 via 192.0.2.11 dev eth0\n")


@pytest.mark.parametrize("routes, clash", [
    (ROUTES, ""),                                                   # peers' subnets only
    (ROUTES + "10.10.16.0/20 via 192.0.2.12 dev eth0\n", "10.10.16.0/20 via 192.0.2.12 dev eth0"),
    (ROUTES + "10.10.16.0/20 dev cni0 scope link\n", ""),            # our own bridge: no "via"
])
def test_route_clash_check(routes, clash):
    assert dockeropts.subnet_routed_via_gateway("10.10.16.1/20", routes) == clash


@pytest.mark.netns
def test_route_clash_in_a_namespace_fails_after_writing(lab, tmp_path):
    """The script's last step, with a real routing table: our subnet routed via a gateway."""
    host = lab.add_host("h1")
    fenv, denv = _paths(tmp_path, NO_MASQ)
    cli = [sys.executable, "-m", "fastflannel.agent.cli", "docker-opts", "-f", fenv, "-d", denv]
    ok = subprocess.run(lab.ns_cmd(host.ns, *cli), capture_output=True, text=True, timeout=30)
    assert (ok.returncode, ok.stderr) == (0, "")
    lab.sh(host.ns, "ip route add 10.10.16.0/20 via 192.0.2.1")
    bad = subprocess.run(lab.ns_cmd(host.ns, *cli), capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1
    assert bad.stderr == ("Your routing table already contains the subnet: "
                          "10.10.16.0/20 via 192.0.2.1 dev eth0 \n")
    with open(denv) as f:
        assert f.read() == CASES[0][4]
