"""ip-masq and forward rules: the pure rule lists against docs/flannel-compat.md §"ip-masq rules",
then the real thing in a namespace (iptables is per network namespace), read back with iptables-save, and a masquerade
that actually rewrites a container's source address on the lab underlay."""
from __future__ import annotations

import subprocess
import time

import pytest

from fastflannel.agent import ipmasq
from fastflannel.agent.ipmasq import ForwardRules, IPMasq

N, S = "10.0.0.0/8", "10.10.16.0/20"
C = '-m comment --comment "flanneld masq"'
EXPECTED_NAT = [
    f"-A POSTROUTING {C} -j FLANNEL-POSTRTG",
    f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {C} -j RETURN",
    f"-A FLANNEL-POSTRTG -s {S} -d {N} {C} -j RETURN",
    f"-A FLANNEL-POSTRTG -s {N} -d {S} {C} -j RETURN",
    f"-A FLANNEL-POSTRTG ! -s {N} -d {S} {C} -j RETURN",
    f"-A FLANNEL-POSTRTG -s {N} ! -d 224.0.0.0/4 {C} -j MASQUERADE --random-fully",
    f"-A FLANNEL-POSTRTG ! -s {N} -d {N} {C} -j MASQUERADE --random-fully",
]
F = '-m comment --comment "flanneld forward"'
EXPECTED_FWD = [
    f"-A FORWARD {F} -j FLANNEL-FWD",
    f"-A FLANNEL-FWD -s {N} {F} -j ACCEPT",
    f"-A FLANNEL-FWD -d {N} {F} -j ACCEPT",
]


def lines(rules):
    return ["-A " + " ".join([ch] + [ipmasq._quote(a) for a in spec]) for _, ch, spec in rules]


def test_masq_rules_match_flannel():
    assert lines(ipmasq.masq_rules(N, S, True)) == EXPECTED_NAT
    assert all(t == "nat" for t, _, _ in ipmasq.masq_rules(N, S, True))
    plain = lines(ipmasq.masq_rules(N, S, False))
    assert plain == [rule.replace(" --random-fully", "") for rule in EXPECTED_NAT]


def test_forward_rules_match_flannel():
    assert lines(ipmasq.forward_rules(N)) == EXPECTED_FWD
    assert all(t == "filter" for t, _, _ in ipmasq.forward_rules(N))


def test_restore_payload():
    p = ipmasq.restore_payload(ipmasq.forward_rules(N), [("filter", "FLANNEL-FWD")])
    assert p == "*filter\n:FLANNEL-FWD - [0:0]\n" + "\n".join(EXPECTED_FWD) + "\nCOMMIT\n"


def test_version_parse():
    assert ipmasq._version("iptables v1.8.9 (nf_tables)") == (1, 8, 9)
    assert ipmasq._version("iptables v1.6.1") < ipmasq.RANDOM_FULLY_MIN
    assert ipmasq._version("garbage") == (0, 0, 0)


def saved(lab, ns, table):
    out = lab.sh(ns, f"iptables-save -t {table}").stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


@pytest.mark.netns
def test_masq_install_idempotent_repair_remove(lab):
    ns = lab.add_ns("masq")
    m = IPMasq(N, S, netns=ns)
    assert m.ensure_rules() is True
    assert saved(lab, ns, "nat") == EXPECTED_NAT
    assert m.ensure_rules() is False                      # nothing missing: nothing written
    assert saved(lab, ns, "nat") == EXPECTED_NAT
    # someone deletes a rule in the middle and the jump: the set comes back whole and in order
    lab.sh(ns, f"iptables -t nat -D FLANNEL-POSTRTG -s {N} -d {S} {C} -j RETURN")
    lab.sh(ns, f"iptables -t nat -D POSTROUTING {C} -j FLANNEL-POSTRTG")
    lab.sh(ns, "iptables -t nat -A POSTROUTING -j ACCEPT")   # a foreign rule stays
    assert len(m.missing()) == 2
    assert m.ensure_rules() is True
    assert saved(lab, ns, "nat") == ["-A POSTROUTING -j ACCEPT"] + EXPECTED_NAT
    m.remove_rules()
    assert saved(lab, ns, "nat") == ["-A POSTROUTING -j ACCEPT"]
    m.remove_rules()                                      # removing twice is fine


@pytest.mark.netns
def test_masq_random_fully_disabled_and_old_values_removed(lab):
    ns = lab.add_ns("masq2")
    IPMasq(N, "10.10.0.0/20", random_fully=False, netns=ns).ensure_rules()
    assert not any("random-fully" in rule for rule in saved(lab, ns, "nat"))
    # the subnet changed since the last run: the old rules go, the new ones come in
    ipmasq.remove_old_masq_rules(N, "10.10.0.0/20", netns=ns)
    assert saved(lab, ns, "nat") == []
    IPMasq(N, S, netns=ns).ensure_rules()
    assert saved(lab, ns, "nat") == EXPECTED_NAT


@pytest.mark.netns
def test_forward_rules_install_and_repair(lab):
    ns = lab.add_ns("fwd")
    f = ForwardRules(N, netns=ns)
    lab.sh(ns, "iptables -P FORWARD DROP")
    assert f.ensure_rules() is True
    assert saved(lab, ns, "filter") == EXPECTED_FWD
    lab.sh(ns, "iptables -F FLANNEL-FWD")
    assert f.ensure_rules() is True and f.ensure_rules() is False
    assert saved(lab, ns, "filter") == EXPECTED_FWD


@pytest.mark.netns
def test_masquerade_rewrites_container_source(lab):
    """A container on h1 (10.10.16.2) pings the hub (192.0.2.1, outside Network): with the rules
    the hub sees h1's underlay address; without them, the container's own address."""
    h1 = lab.add_host("h1")
    c = lab.add_container(h1, {"FLANNEL_SUBNET": "10.10.16.1/20", "FLANNEL_MTU": "1500"})
    lab.sh(lab.hub, "ip route add 10.10.16.0/20 via 192.0.2.10")   # so un-NATed replies come back

    def sources():
        cap = subprocess.Popen(lab.ns_cmd(lab.hub, "tcpdump", "-i", "br0", "-nn", "-l", "-c", "1", "icmp"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            assert lab.sh(c.ns, "ping -n -q -c 2 -W 1 -i 0.2 192.0.2.1", check=False).returncode == 0
            out, _ = cap.communicate(timeout=10)
        finally:
            if cap.poll() is None:
                cap.kill()
                cap.wait()
        return out

    assert "10.10.16.2 > 192.0.2.1" in sources()
    IPMasq(N, S, netns=h1.ns).ensure_rules()
    assert "192.0.2.10 > 192.0.2.1" in sources()


# -- IPv6 (flannel's MasqIP6Rules: the same set with ip6tables and ff00::/8) -------------------------

N6, S6 = "fc00:10::/48", "fc00:10:0:16::/64"
EXPECTED_NAT6 = [rule.replace(N, N6).replace(S, S6).replace("224.0.0.0/4", "ff00::/8") for rule in EXPECTED_NAT]
EXPECTED_FWD6 = [rule.replace(N, N6) for rule in EXPECTED_FWD]


def test_ipv6_rules_match_flannel():
    assert lines(ipmasq.masq_rules(N6, S6, True)) == EXPECTED_NAT6
    assert lines(ipmasq.forward_rules(N6)) == EXPECTED_FWD6


@pytest.mark.netns
def test_ipv6_rules_go_to_ip6tables_only(lab):
    ns = lab.add_ns("masq6")
    m, f = IPMasq(N6, S6, netns=ns), ForwardRules(N6, netns=ns)
    assert m.ensure_rules() is True and f.ensure_rules() is True
    out = lab.sh(ns, "ip6tables-save -t nat").stdout.splitlines()
    assert [line for line in out if line.startswith("-A ")] == EXPECTED_NAT6
    out = lab.sh(ns, "ip6tables-save -t filter").stdout.splitlines()
    assert [line for line in out if line.startswith("-A ")] == EXPECTED_FWD6
    assert saved(lab, ns, "nat") == [] and saved(lab, ns, "filter") == []     # iptables untouched
    lab.sh(ns, f"ip6tables -t nat -D FLANNEL-POSTRTG -s {N6} -d {S6} {C} -j RETURN")
    assert m.ensure_rules() is True and m.ensure_rules() is False
    ipmasq.remove_old_masq_rules(N6, S6, netns=ns)
    out = lab.sh(ns, "ip6tables-save -t nat").stdout.splitlines()
    assert [line for line in out if line.startswith("-A ")] == []
