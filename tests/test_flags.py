"""flanneld-compatible flags: Go flag syntax, defaults, FLANNELD_* variables, errors
(docs/flannel-compat.md §"Flags and FLANNELD_* environment")."""
from __future__ import annotations

import pytest

from fastflannel.agent.flags import FlagError, HelpRequested, Options, parse_flags, usage


def parse(*argv, **env) -> Options:
    return parse_flags(list(argv), env)


def error(*argv, **env) -> str:
    with pytest.raises(FlagError) as ei:
        parse_flags(list(argv), env)
    return str(ei.value)


def test_defaults():
    o = parse()
    assert o.etcd_endpoints == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    assert o.etcd_prefix == "/coreos.com/network"
    assert (o.etcd_keyfile, o.etcd_certfile, o.etcd_cafile, o.etcd_username, o.etcd_password) == ("",) * 5
    assert o.iface == [] and o.iface_regex == [] and o.iface_can_reach == "" and o.public_ip == ""
    assert o.subnet_file == "/run/flannel/subnet.env"
    assert o.subnet_lease_renew_margin == 60
    assert o.ip_masq is False and o.ip_masq_fully_random_disable is False
    assert o.iptables_resync == 5 and o.iptables_forward_rules is True
    assert o.healthz_ip == "0.0.0.0" and o.healthz_port == 0
    assert o.kube_subnet_mgr is False and o.version is False and o.v == 0
    assert (o.fastpath_workers, o.fastpath_batch, o.fastpath_offload, o.udp_anti_spoof) == (1, 64, True, True)
    assert o.args == [] and o.set_on_command_line == () and o.set_from_env == ()


@pytest.mark.parametrize("argv", [
    ["-etcd-prefix=/x"], ["--etcd-prefix=/x"], ["-etcd-prefix", "/x"], ["--etcd-prefix", "/x"],
])
def test_all_spellings(argv):
    assert parse(*argv).etcd_prefix == "/x"


@pytest.mark.parametrize("argv,value", [
    (["-ip-masq"], True), (["--ip-masq"], True), (["-ip-masq=true"], True), (["-ip-masq=false"], False),
    (["-ip-masq=1"], True), (["-ip-masq=F"], False), (["--ip-masq=TRUE"], True), (["-ip-masq=False"], False),
])
def test_bool_flags(argv, value):
    assert parse(*argv).ip_masq is value


def test_bool_does_not_consume_next_argument_like_go():
    o = parse("-ip-masq", "false", "-v=3")
    assert o.ip_masq is True and o.args == ["false", "-v=3"] and o.v == 0


def test_iptables_forward_rules_can_be_disabled():
    assert parse("-iptables-forward-rules=false").iptables_forward_rules is False


def test_repeatable_flags():
    o = parse("-iface", "eth0", "--iface=10.0.0.1", "-iface-regex", "^10\\.", "-iface-regex=eth.*")
    assert o.iface == ["eth0", "10.0.0.1"] and o.iface_regex == ["^10\\.", "eth.*"]


def test_last_value_wins_for_plain_flags():
    assert parse("-etcd-prefix=/a", "-etcd-prefix=/b").etcd_prefix == "/b"


def test_endpoints_comma_split():
    o = parse("-etcd-endpoints=http://10.0.0.1:2379,https://10.0.0.2:2379")
    assert o.etcd_endpoints == ["http://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert parse("-etcd-endpoints= http://a:1 , ,http://b:2").etcd_endpoints == ["http://a:1", "http://b:2"]


@pytest.mark.parametrize("argv,value", [(["-v=2"], 2), (["-v", "4"], 4), (["--v=0x10"], 16), (["-v", "010"], 8),
                                        (["-v=-1"], -1), (["-v=1_000"], 1000)])
def test_int_syntax_like_strconv(argv, value):
    assert parse(*argv).v == value


def test_all_the_values():
    o = parse("-etcd-keyfile=k", "-etcd-certfile=c", "-etcd-cafile=ca", "-etcd-username=u", "-etcd-password=p",
              "-iface-can-reach=192.0.2.1", "-public-ip=192.0.2.10", "-subnet-file=/tmp/s.env",
              "-subnet-lease-renew-margin=1439", "-ip-masq-fully-random-disable", "-iptables-resync=9",
              "-healthz-ip=127.0.0.1", "-healthz-port=8471", "-version", "-fastpath-workers=4",
              "-fastpath-batch=1024", "-fastpath-offload=false", "-udp-anti-spoof=false", "-public-ipv6=fc00::1",
              "-ip-blackhole-route", "-vmodule=x=2", "-log_backtrace_at=a.go:1", "-kube-api-url=x",
              "-net-config-path=/n", "-kube-subnet-mgr=false")
    assert (o.etcd_keyfile, o.etcd_certfile, o.etcd_cafile, o.etcd_username, o.etcd_password) == \
        ("k", "c", "ca", "u", "p")
    assert (o.iface_can_reach, o.public_ip, o.subnet_file) == ("192.0.2.1", "192.0.2.10", "/tmp/s.env")
    assert o.subnet_lease_renew_margin == 1439 and o.ip_masq_fully_random_disable is True
    assert (o.iptables_resync, o.healthz_ip, o.healthz_port, o.version) == (9, "127.0.0.1", 8471, True)
    assert (o.fastpath_workers, o.fastpath_batch, o.fastpath_offload, o.udp_anti_spoof) == (4, 1024, False, False)
    assert o.public_ipv6 == "fc00::1" and o.ip_blackhole_route and o.vmodule == "x=2"


def test_parsing_stops_at_first_non_flag_and_double_dash():
    o = parse("-ip-masq", "run", "-v=2")
    assert o.args == ["run", "-v=2"] and o.v == 0
    o = parse("-v=1", "--", "-v=2")
    assert o.args == ["-v=2"] and o.v == 1
    assert parse("-", "-v=2").args == ["-", "-v=2"]


# -- environment ----------------------------------------------------------------------------------

def test_env_for_flags_not_on_the_command_line():
    o = parse("-etcd-prefix=/cmd", FLANNELD_ETCD_PREFIX="/env", FLANNELD_ETCD_ENDPOINTS="http://e:1,http://e:2",
              FLANNELD_IP_MASQ="true", FLANNELD_IFACE="eth0,eth1", FLANNELD_SUBNET_LEASE_RENEW_MARGIN="30",
              FLANNELD_V="2", FLANNELD_FASTPATH_BATCH="32", FLANNELD_LOG_BACKTRACE_AT="b.go:2")
    assert o.etcd_prefix == "/cmd"                       # the command line wins
    assert o.etcd_endpoints == ["http://e:1", "http://e:2"]
    assert o.ip_masq is True
    assert o.iface == ["eth0,eth1"]                      # one value, no comma split
    assert (o.subnet_lease_renew_margin, o.v, o.fastpath_batch) == (30, 2, 32)
    assert o.log_backtrace_at == "b.go:2"
    assert o.set_on_command_line == ("etcd-prefix",)
    assert "etcd-endpoints" in o.set_from_env and "etcd-prefix" not in o.set_from_env


def test_env_empty_values_ignored_and_cmdline_repeatable_wins():
    o = parse("-iface=eth9", FLANNELD_IFACE="eth0", FLANNELD_ETCD_PREFIX="", FLANNELD_IP_MASQ="")
    assert o.iface == ["eth9"] and o.etcd_prefix == "/coreos.com/network" and o.ip_masq is False


def test_env_false_bool_and_unrelated_vars():
    o = parse(FLANNELD_IPTABLES_FORWARD_RULES="false", FLANNEL_IP_MASQ="true", FLANNELD_NOT_A_FLAG="x")
    assert o.iptables_forward_rules is False and o.ip_masq is False


def test_env_bad_values_name_the_variable():
    assert error(FLANNELD_IPTABLES_RESYNC="soon") == 'invalid value "soon" for FLANNELD_IPTABLES_RESYNC: parse error'
    assert "FLANNELD_IP_MASQ" in error(FLANNELD_IP_MASQ="yes")


def test_env_kube_subnet_mgr_refused():
    assert "kube subnet manager is not supported by fastflannel" in error(FLANNELD_KUBE_SUBNET_MGR="true")


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["-foo"], "flag provided but not defined: -foo"),
    (["--foo=1"], "flag provided but not defined: -foo"),
    (["-IP-MASQ"], "flag provided but not defined: -IP-MASQ"),
    (["-iptables-resync", "abc"], 'invalid value "abc" for flag -iptables-resync: parse error'),
    (["-healthz-port=1.5"], 'invalid value "1.5" for flag -healthz-port: parse error'),
    (["-v=99999999999999999999"], 'invalid value "99999999999999999999" for flag -v: value out of range'),
    (["-ip-masq=yes"], 'invalid boolean value "yes" for -ip-masq: parse error'),
    (["-etcd-prefix"], "flag needs an argument: -etcd-prefix"),
    (["-v"], "flag needs an argument: -v"),
    (["---v=1"], "bad flag syntax: ---v=1"),
    (["-=1"], "bad flag syntax: -=1"),
    (["-subnet-lease-renew-margin=0"], "Invalid subnet-lease-renew-margin option, out of acceptable range"),
    (["-subnet-lease-renew-margin=1440"], "Invalid subnet-lease-renew-margin option, out of acceptable range"),
    (["-kube-subnet-mgr"], "kube subnet manager is not supported by fastflannel"),
    (["-etcd-endpoints=,"], "-etcd-endpoints"),
    (["-iptables-resync=0"], "-iptables-resync"),
    (["-healthz-port=70000"], "-healthz-port"),
    (["-fastpath-workers=0"], "-fastpath-workers"),
    (["-fastpath-batch=1025"], "-fastpath-batch"),
])
def test_errors(argv, message):
    m = error(*argv)
    assert m.startswith(message) and "\n" not in m


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["-help"], ["-v=2", "-h"]])
def test_help(argv):
    with pytest.raises(HelpRequested) as ei:
        parse(*argv)
    text = ei.value.text
    assert str(ei.value) == text and text == usage()
    for name in ("-etcd-endpoints", "-iface value", "-ip-masq", "-subnet-lease-renew-margin int",
                 "-fastpath-batch", "FLANNELD_"):
        assert name in text
    assert '(default "/coreos.com/network")' in text


def test_margin_bounds_accepted():
    assert parse("-subnet-lease-renew-margin=1").subnet_lease_renew_margin == 1
    assert parse("-subnet-lease-renew-margin", "1439").subnet_lease_renew_margin == 1439


def test_negative_value_is_consumed_as_the_argument_like_go():
    assert "out of acceptable range" in error("-subnet-lease-renew-margin", "-5")
