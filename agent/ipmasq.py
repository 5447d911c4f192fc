"""flanneld's iptables rules: `-ip-masq` (nat FLANNEL-POSTRTG) and `-iptables-forward-rules`
(filter FLANNEL-FWD), docs/flannel-compat.md §"ip-masq rules" (flannel's
pkg/trafficmngr/iptables/iptables.go).

The rule lists are pure functions (`masq_rules`, `forward_rules`); the classes apply them:
`ensure_rules()` checks every rule with `iptables -C` and, when any is missing, deletes the whole
set and re-adds it in order with one `iptables-restore --noflush` transaction, as flannel's resync
loop does; `remove_rules()` deletes them (flannel does this for the rules built from the network
and subnet of the previous run when they changed). Like flannel, nothing is removed on exit.
Dual-stack: the same sets for IPv6Network and the IPv6 lease, with `ip6tables` and ff00::/8 as the
multicast range (flannel's MasqIP6Rules, docs/flannel-compat.md §"Dual-stack").
"""
from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from functools import cache
from typing import List, Optional, Sequence, Tuple

from .errors import IptablesError

log = logging.getLogger("fastflannel.ipmasq")

KUBE_PROXY_MARK = "0x4000/0x4000"    # kube-proxy's masquerade mark; such packets are left to it
MULTICAST = "224.0.0.0/4"
MULTICAST6 = "ff00::/8"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"
MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
CMD_TIMEOUT_S = 30
# iptables >= 1.6.2 has MASQUERADE --random-fully and iptables-restore --wait (go-iptables checks
# the same version before using them).
RANDOM_FULLY_MIN = (1, 6, 2)
RESTORE_WAIT_MIN = (1, 6, 2)

# (table, chain, rulespec) — rulespec is the argv after `-A CHAIN`.
Rule = Tuple[str, str, Tuple[str, ...]]


def masq_rules(network, subnet, random_fully: bool) -> List[Rule]:
    """nat rules for N = Network and S = this host's subnet, in flannel's order."""
    net = ipaddress.ip_network(str(network))
    n, s = str(net), str(ipaddress.ip_network(str(subnet)))
    multicast = MULTICAST6 if net.version == 6 else MULTICAST
    c = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    return [
        ("nat", "POSTROUTING", c + ("-j", MASQ_CHAIN)),
        ("nat", MASQ_CHAIN, ("-m", "mark", "--mark", KUBE_PROXY_MARK) + c + ("-j", "RETURN")),
        ("nat", MASQ_CHAIN, ("-s", s, "-d", n) + c + ("-j", "RETURN")),
        ("nat", MASQ_CHAIN, ("-s", n, "-d", s) + c + ("-j", "RETURN")),
        # keeps the client source IP of outside traffic entering our own pods (#734)
        ("nat", MASQ_CHAIN, ("!", "-s", n, "-d", s) + c + ("-j", "RETURN")),
        ("nat", MASQ_CHAIN, ("-s", n, "!", "-d", multicast) + c + masq),
        # host-to-overlay traffic leaves with the flannel interface address as source (#318)
        ("nat", MASQ_CHAIN, ("!", "-s", n, "-d", n) + c + masq),
    ]


def forward_rules(network) -> List[Rule]:
    """filter rules accepting overlay traffic despite a DROP FORWARD policy (Docker >= 1.13)."""
    n = str(ipaddress.ip_network(str(network)))
    c = ("-m", "comment", "--comment", FWD_COMMENT)
    return [
        ("filter", "FORWARD", c + ("-j", FWD_CHAIN)),
        ("filter", FWD_CHAIN, ("-s", n) + c + ("-j", "ACCEPT")),
        ("filter", FWD_CHAIN, ("-d", n) + c + ("-j", "ACCEPT")),
    ]


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


def restore_payload(rules: Sequence[Rule], chains: Sequence[Tuple[str, str]]) -> str:
    """iptables-restore input. Declaring a user chain (`:CHAIN - [0:0]`) creates it, or flushes it
    when it exists even under --noflush, so the chain's rules come back complete and in order."""
    out: List[str] = []
    for table in dict.fromkeys(t for t, _, _ in rules):
        out.append(f"*{table}")
        out += [f":{ch} - [0:0]" for t, ch in chains if t == table]
        out += ["-A " + " ".join([ch] + [_quote(a) for a in spec]) for t, ch, spec in rules if t == table]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _version(text: str) -> Tuple[int, ...]:
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


class Iptables:
    """Runs iptables/iptables-restore (`ipv6`: ip6tables/ip6tables-restore), optionally inside a
    namespace (`ip netns exec NS`, tests)."""

    def __init__(self, netns: Optional[str] = None, ipv6: bool = False):
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.cmd = "ip6tables" if ipv6 else "iptables"

    def run(self, argv: Sequence[str], stdin: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = self.prefix + list(argv)
        try:
            p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IptablesError(f"{' '.join(argv)}: {e}") from None
        if check and p.returncode != 0:
            raise IptablesError(f"{' '.join(argv)} (rc={p.returncode}): {p.stderr.strip()}")
        return p

    def version(self) -> Tuple[int, ...]:
        return _cached_version(tuple(self.prefix), self.cmd)

    def has_random_fully(self) -> bool:
        return self.version() >= RANDOM_FULLY_MIN

    def exists(self, rule: Rule) -> bool:
        table, chain, spec = rule
        return self.run([self.cmd, "--wait", "-t", table, "-C", chain, *spec], check=False).returncode == 0

    def delete(self, rule: Rule) -> bool:
        table, chain, spec = rule
        return self.run([self.cmd, "--wait", "-t", table, "-D", chain, *spec], check=False).returncode == 0

    def restore(self, payload: str) -> None:
        argv = [self.cmd + "-restore", "--noflush"]
        if self.version() >= RESTORE_WAIT_MIN:
            argv.append("--wait")
        self.run(argv, stdin=payload)


@cache
def _cached_version(prefix: Tuple[str, ...], cmd: str = "iptables") -> Tuple[int, ...]:
    try:
        p = subprocess.run(list(prefix) + [cmd, "--version"], capture_output=True, text=True,
                           timeout=CMD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IptablesError(f"{cmd} --version: {e}") from None
    return _version(p.stdout + p.stderr)


class _RuleSet:
    chains: Sequence[Tuple[str, str]] = ()
    what = "iptables"

    def __init__(self, netns: Optional[str] = None, ipv6: bool = False):
        self.ipt = Iptables(netns, ipv6)
        if ipv6:
            self.what = f"{self.what} (IPv6)"
        self._rules: Optional[List[Rule]] = None

    def build(self) -> List[Rule]:
        raise NotImplementedError

    def rules(self) -> List[Rule]:
        if self._rules is None:
            self._rules = self.build()
        return self._rules

    def missing(self) -> List[Rule]:
        return [r for r in self.rules() if not self.ipt.exists(r)]

    def ensure_rules(self) -> bool:
        """Install or repair the set; True when something had to be (re)written."""
        missing = self.missing()
        if not missing:
            return False
        if len(missing) < len(self.rules()):
            log.warning("Some %s rules are missing (%d of %d); deleting and recreating them",
                        self.what, len(missing), len(self.rules()))
        else:
            log.info("Setting up %s rules", self.what)
        self._delete_jumps()
        self.ipt.restore(restore_payload(self.rules(), self.chains))
        return True

    def _delete_jumps(self) -> None:
        # Rules in built-in chains are deleted one by one (duplicates too); user chains are
        # flushed by the restore payload.
        user = {ch for _, ch in self.chains}
        for rule in self.rules():
            if rule[1] not in user:
                while self.ipt.delete(rule):
                    pass

    def remove_rules(self) -> None:
        """Delete every rule of this set (missing ones are fine); chains are kept, as flannel does."""
        for rule in self.rules():
            while self.ipt.delete(rule):
                pass


class IPMasq(_RuleSet):
    """`-ip-masq`: nat FLANNEL-POSTRTG rules for Network and this host's subnet."""
    chains = (("nat", MASQ_CHAIN),)
    what = "ip-masq"

    def __init__(self, network, subnet, random_fully: bool = True, netns: Optional[str] = None):
        super().__init__(netns, ipaddress.ip_network(str(network)).version == 6)
        self.network, self.subnet, self.want_random_fully = network, subnet, random_fully

    def build(self) -> List[Rule]:
        rf = self.want_random_fully and self.ipt.has_random_fully()
        return masq_rules(self.network, self.subnet, rf)


class ForwardRules(_RuleSet):
    """`-iptables-forward-rules`: filter FLANNEL-FWD accepting traffic from and to Network."""
    chains = (("filter", FWD_CHAIN),)
    what = "forward"

    def __init__(self, network, netns: Optional[str] = None):
        super().__init__(netns, ipaddress.ip_network(str(network)).version == 6)
        self.network = network

    def build(self) -> List[Rule]:
        return forward_rules(self.network)


def remove_old_masq_rules(network, subnet, netns: Optional[str] = None) -> None:
    """Delete the masq rules built from a previous run's network/subnet (both random-fully variants,
    since the old run may have had either)."""
    ipt = Iptables(netns, ipaddress.ip_network(str(network)).version == 6)
    for rf in (True, False):
        for rule in masq_rules(network, subnet, rf):
            while ipt.delete(rule):
                pass
