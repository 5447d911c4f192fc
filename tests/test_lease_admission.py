"""Lease admission, the pure policy (docs/architecture.md §"Lease admission"): which peer leases
the tracker hands the backends, what allocation counts, and how the keeper answers events for
our own subnet. The in-memory registry stands in for etcd; tests/test_lease_policy_kernel.py and
tests/test_faults_leases.py check the same promises against the kernel and a real etcd.
"""
from __future__ import annotations

import logging
import math
import random
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from fastflannel.agent.config import parse_config
from fastflannel.agent.errors import LeaseLost, SubnetExists
from fastflannel.agent.lease import Lease, LeaseEvent
from fastflannel.agent.peers import CODES, PeerTracker
from fastflannel.agent.subnets import REANNOUNCE_MIN_S, SUBNET_TTL_S, LeaseKeeper, SubnetManager
from support.fakeregistry import FakeRegistry, attrs

CFG = parse_config('{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0",'
                   '"Backend":{"Type":"vxlan","VNI":100}}')
OWN = N("10.10.0.0/20")
ME = "192.0.2.10"
MY_MAC = "0a:00:00:00:00:10"
ADDED, REMOVED = LeaseEvent.ADDED, LeaseEvent.REMOVED


def vx(ip, mac=None, btype="vxlan"):
    return attrs(ip, btype, {"VNI": 100, "VtepMAC": mac or f"0a:00:00:00:00:{int(ip.rsplit('.', 1)[1]):02x}"})


def lease(net, ip, mac=None, rev=0, exp=1000.0, **kw):
    return Lease(N(net), vx(ip, mac, **kw), exp, rev)


def tracker(**kw):
    return PeerTracker(OWN, vx(ME, MY_MAC), CFG, **kw)


def add(t, *leases):
    return t.apply([LeaseEvent(ADDED, x) for x in leases])


def rm(t, *nets):
    return t.apply([LeaseEvent(REMOVED, Lease(N(n), None)) for n in nets])


def kinds(events):
    return [(e.kind, str(e.lease.subnet)) for e in events]


def admitted(t):
    return sorted(str(x.subnet) for x in t.leases())


H2 = lease("10.10.16.0/20", "192.0.2.11")
H3 = lease("10.10.32.0/20", "192.0.2.12")


# -- one lease alone ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,code,words", [
    (lease("192.168.77.0/24", "192.0.2.77"), "outside-network", "outside the network 10.0.0.0/8"),
    (lease("10.0.0.0/8", "192.0.2.77"), "outside-network", "is the whole network"),
    (lease("0.0.0.0/0", "192.0.2.77"), "outside-network", "covers the whole network"),
    (lease("10.16.0.0/12", "192.0.2.77"), "prefix-length", "/12 is not the network's SubnetLen /20"),
    (lease("10.10.48.0/24", "192.0.2.77"), "prefix-length", "/24"),
    (lease("10.10.48.0/20", "0.0.0.0"), "public-ip", "not a host address"),
    (lease("10.10.48.0/20", "127.0.0.1"), "public-ip", "loopback"),
    (lease("10.10.48.0/20", "224.0.0.1"), "public-ip", "multicast"),
    (lease("10.10.48.0/20", "255.255.255.255"), "public-ip", "reserved"),
    (lease("10.10.48.0/20", "10.10.16.5"), "public-ip", "inside the overlay network"),
    (lease("10.10.48.0/20", ME, MY_MAC), "own-public-ip", "is this host's"),
    (lease("10.10.48.0/20", "192.0.2.77", "zz:zz:zz:zz:zz:zz"), "vtep-mac", "'zz:zz:zz:zz:zz:zz'"),
    (lease("10.10.48.0/20", "192.0.2.77", "01:00:5e:00:00:01"), "vtep-mac", "usable VtepMAC"),
    (Lease(N("10.10.48.0/20"), attrs("192.0.2.77", "vxlan", {"VNI": 100}), 1.0), "vtep-mac", "None"),
])
def test_a_lease_that_does_not_fit_is_never_handed_to_the_backends(bad, code, words, caplog):
    t = tracker()
    t.reset([H2])
    with caplog.at_level(logging.WARNING, logger="fastflannel.peers"):
        assert add(t, bad) == []
        assert t.reset([H2, bad]) == []                 # a re-list neither admits nor logs again
        assert add(t, bad) == []                        # nor does the same value written again
    assert admitted(t) == ["10.10.16.0/20"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and bad.key in warnings[0] and words in warnings[0], warnings
    assert t.rejected() == {bad.key: warnings[0].split(": ", 1)[1]}
    assert t.rejection_counts() == dict(dict.fromkeys(CODES, 0), **{code: 1})
    assert rm(t, str(bad.subnet)) == [] and t.rejected() == {}        # its DELETE changes nothing else
    assert admitted(t) == ["10.10.16.0/20"]


def test_host_gw_and_udp_leases_need_no_mac():
    t = tracker()
    evs = add(t, Lease(N("10.10.16.0/20"), attrs("192.0.2.11", "host-gw"), 1.0),
              Lease(N("10.10.32.0/20"), attrs("192.0.2.12"), 1.0))
    assert kinds(evs) == [(ADDED, "10.10.16.0/20"), (ADDED, "10.10.32.0/20")]


def test_without_a_config_only_the_rules_of_the_lease_apply():
    t = PeerTracker(OWN)
    assert kinds(add(t, lease("192.168.77.0/24", "192.0.2.77"))) == [(ADDED, "192.168.77.0/24")]
    assert add(t, lease("10.10.48.0/20", "127.0.0.1")) == []


# -- never overriding a live host -----------------------------------------------------------------

def test_a_refused_value_never_replaces_the_admitted_value_of_its_key(caplog):
    t = tracker()
    t.reset([H2, H3])
    with caplog.at_level(logging.WARNING, logger="fastflannel.peers"):
        assert add(t, lease("10.10.16.0/20", "192.0.2.11", "zz:00:00:00:00:00")) == []
    assert "keeping its last good value" in caplog.text
    assert H2 in t.leases()
    # A good value replaces it, a DELETE removes the last good value.
    newer = lease("10.10.16.0/20", "192.0.2.11", "0a:00:00:00:00:99")
    assert kinds(add(t, newer)) == [(ADDED, "10.10.16.0/20")] and newer in t.leases()
    assert [e.lease for e in rm(t, "10.10.16.0/20")] == [newer]
    # The same after a re-list: the refused value stays refused, the good one programmed.
    t.reset([H2, H3])
    assert t.reset([lease("10.10.16.0/20", "192.0.2.11", "zz"), H3]) == [] and H2 in t.leases()


def test_copies_of_one_host_are_all_admitted():
    # A copied lease, or a reservation beside the host's lease: others cannot tell which one
    # the host uses; the vxlan backend counts the FDB entry they share.
    t = tracker()
    copy = lease("10.10.48.0/20", "192.0.2.11")
    assert kinds(add(t, H2, copy)) == [(ADDED, "10.10.16.0/20"), (ADDED, "10.10.48.0/20")]
    assert t.rejected() == {}


# -- between leases: one MAC, one host ------------------------------------------------------------

def test_a_mac_shared_by_two_hosts_stays_with_the_first_and_the_other_follows_when_it_changes(caplog):
    t = tracker()
    t.reset([H2, H3])
    clone = lease("10.10.48.0/20", "192.0.2.13", H2.attrs.backend_data["VtepMAC"])
    with caplog.at_level(logging.WARNING, logger="fastflannel.peers"):
        assert add(t, clone) == []
    assert "also announced by 10.10.16.0-20 (192.0.2.11)" in caplog.text
    assert t.rejection_counts()["mac-conflict"] == 1
    # h2 renews: h2 keeps the MAC. Then the clone takes a new MAC: it is admitted.
    assert kinds(add(t, lease("10.10.16.0/20", "192.0.2.11", rev=9, exp=2000.0))) == [(ADDED, "10.10.16.0/20")]
    assert admitted(t) == ["10.10.16.0/20", "10.10.32.0/20"]
    assert kinds(add(t, lease("10.10.48.0/20", "192.0.2.13"))) == [(ADDED, "10.10.48.0/20")]
    assert t.rejected() == {}


def test_a_shadowed_lease_is_programmed_when_the_offender_goes():
    t = tracker()
    t.reset([H2])
    clone = lease("10.10.48.0/20", "192.0.2.13", H2.attrs.backend_data["VtepMAC"])
    add(t, clone)
    evs = rm(t, "10.10.16.0/20")
    assert kinds(evs) == [(REMOVED, "10.10.16.0/20"), (ADDED, "10.10.48.0/20")]
    assert evs[1].lease == clone


def test_a_mac_conflict_in_a_listing_goes_to_the_older_write():
    t = tracker()
    a = lease("10.10.64.0/20", "192.0.2.21", "0a:00:00:00:00:77", rev=50)
    b = lease("10.10.48.0/20", "192.0.2.22", "0a:00:00:00:00:77", rev=40)
    assert kinds(t.reset([a, b])) == [(ADDED, "10.10.48.0/20")]
    # Once admitted, b keeps it across later listings, whatever the revisions.
    assert t.reset([a, lease("10.10.48.0/20", "192.0.2.22", "0a:00:00:00:00:77", rev=99)]) == []


def test_a_peer_with_our_mac_is_refused_until_we_take_a_new_one():
    t = tracker()
    t.reset([H2])
    clone = lease("10.10.48.0/20", "192.0.2.13", MY_MAC)
    assert add(t, clone) == []
    assert t.take_mac_conflicts() == [clone] and t.take_mac_conflicts() == []
    add(t, clone)                                          # written again: not a new conflict
    assert t.take_mac_conflicts() == []
    assert kinds(t.set_own_attrs(vx(ME, "0a:00:00:00:01:10"))) == [(ADDED, "10.10.48.0/20")]
    assert t.rejected() == {}


# -- allocation -----------------------------------------------------------------------------------

def manager(reg, prev=None, rng=None):
    return SubnetManager(reg, CFG, A(ME), prev, rng=rng or random.Random(3), clock=reg.clock)


class First:
    """An rng whose choice() records the window of free subnets and takes the first."""

    def __init__(self):
        self.windows = []

    def choice(self, seq):
        self.windows.append(list(seq))
        return seq[0]


def test_a_covering_lease_blocks_no_allocation():
    # issue 8: a 10.0.0.0/8 lease made every new host fail with "out of subnets".
    reg = FakeRegistry()
    reg.put("10.0.0.0/8", "192.0.2.77", btype="vxlan")
    reg.put("10.10.0.0/16", "192.0.2.78", btype="vxlan")
    reg.put("10.10.16.0/20", "192.0.2.11", btype="vxlan")
    rng = First()
    lease = manager(reg, rng=rng).acquire(vx(ME, MY_MAC))
    assert lease.subnet == N("10.10.0.0/20") and N("10.10.16.0/20") not in rng.windows[0]
    assert len(rng.windows[0]) == 100 and reg.holder("10.0.0.0/8") == "192.0.2.77"


def test_of_several_leases_with_our_ip_the_previous_subnet_wins():
    reg = FakeRegistry()
    reg.put("10.10.112.0/20", ME)             # a copy under an earlier key ("10.10.112" < "10.10.32")
    reg.put("10.10.32.0/20", ME)
    assert manager(reg, prev=N("10.10.32.0/20")).acquire(vx(ME, MY_MAC)).subnet == N("10.10.32.0/20")
    reg2 = FakeRegistry()
    reg2.put("10.0.0.0/8", ME)                # a covering copy first in key order
    reg2.put("10.10.32.0/20", ME)
    assert manager(reg2).acquire(vx(ME, MY_MAC)).subnet == N("10.10.32.0/20")
    assert reg2.holder("10.0.0.0/8") == ME and "delete_lease" not in reg2.names()


def test_a_subnet_lost_in_a_race_is_not_tried_again():
    reg = FakeRegistry()
    tried = []

    def sneak(method, subnet):
        if method == "create_lease":
            tried.append(subnet)
            if len(tried) <= 3:
                raise SubnetExists("subnet already exists")     # a key the listing did not show
    reg.before = sneak
    cfg = parse_config('{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.10.48.0"}')
    mgr = SubnetManager(reg, cfg, A(ME), N("10.10.16.0/20"), rng=random.Random(1), clock=reg.clock)
    lease = mgr.acquire(vx(ME, MY_MAC))
    assert len(set(tried)) == len(tried) == 4 and lease.subnet == tried[-1]


# -- our own subnet: another spelling of our key, a rewritten value --------------------------------

class Keeper:
    """A LeaseKeeper on a fake clock whose waits run hooks; it stops after `max_waits` waits."""

    def __init__(self, max_waits=3):
        self.reg = FakeRegistry()
        self.mgr = SubnetManager(self.reg, CFG, A(ME), clock=self.reg.clock)
        self.lease = self.mgr.acquire(vx(ME, MY_MAC))
        self.reg.calls.clear()
        self.waits, self.hooks, self.max_waits = [], {}, max_waits
        self.keeper = LeaseKeeper(self.mgr, self.lease, wait=self.wait)
        import threading
        self.stop = threading.Event()

    def wait(self, timeout):
        i = len(self.waits)
        self.waits.append(timeout)
        if i in self.hooks:
            self.hooks[i]()
        if timeout == math.inf or len(self.waits) >= self.max_waits:
            self.stop.set()
            return
        self.reg.clock.advance(timeout)

    def event(self, kind, a=None):
        self.keeper.on_event(LeaseEvent(kind, Lease(self.lease.subnet, a, self.reg.clock() + 5)))

    def run(self):
        self.keeper.run(self.stop)


def test_an_alias_of_our_key_with_another_host_never_ends_the_daemon():
    # `<prefix>/subnets/10.10.x.0-20&fc00::-64` parses to our subnet: its PUT reaches us as an
    # event for our subnet, but our own key still holds our lease.
    k = Keeper()
    k.hooks[0] = lambda: k.event(ADDED, vx("192.0.2.66"))
    k.run()
    assert k.reg.holder(k.lease.subnet) == ME
    assert k.reg.names()[:2] == ["get_lease", "update_lease"]          # looked, then put ours back
    assert k.reg._lease(k.lease.subnet).attrs == vx(ME, MY_MAC)


def test_a_delete_of_an_alias_puts_our_lease_back_for_the_peers():
    k = Keeper()
    k.hooks[0] = lambda: k.event(REMOVED)                # the alias went; our key did not
    k.run()
    assert k.reg.names()[:3] == ["create_lease", "get_lease", "update_lease"]


def test_rewritten_attrs_under_our_key_are_put_back_at_most_every_5s():
    k = Keeper(max_waits=3)
    put = k.reg.update_lease

    def rewrite():
        k.reg.put(k.lease.subnet, ME, btype="vxlan", data={"VNI": 100, "VtepMAC": "zz"})
        k.event(ADDED, k.reg._lease(k.lease.subnet).attrs)

    def put_then_rewrite(*args):
        lease = put(*args)
        if k.reg.names().count("update_lease") == 1:
            rewrite()                                      # again, right after our first PUT
        return lease
    k.reg.update_lease = put_then_rewrite                  # type: ignore[method-assign]
    k.hooks[0] = rewrite
    k.run()
    assert k.reg._lease(k.lease.subnet).attrs == vx(ME, MY_MAC)
    assert k.waits[1] == REANNOUNCE_MIN_S and k.reg.names().count("update_lease") == 2


def test_another_host_in_our_own_key_is_still_a_lost_lease():
    k = Keeper()

    def taken():
        k.reg.put(k.lease.subnet, "192.0.2.66", btype="vxlan")
        k.event(ADDED, vx("192.0.2.66"))
    k.hooks[0] = taken
    with pytest.raises(LeaseLost, match="now held by 192.0.2.66"):
        k.run()
    assert "update_lease" not in k.reg.names()


def test_announce_puts_new_attrs_at_once_and_renewals_keep_them():
    k = Keeper(max_waits=2)
    new = vx(ME, "0a:00:00:00:01:10")
    k.keeper.announce(new)
    k.run()
    assert k.reg.names()[:2] == ["get_lease", "update_lease"] and k.reg._lease(k.lease.subnet).attrs == new
    assert k.waits[0] == SUBNET_TTL_S - 3600 and k.keeper.lease.attrs == new
