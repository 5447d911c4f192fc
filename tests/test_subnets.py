"""Lease policy against the in-memory registry: acquisition order, allocation window, races,
reservations, and the LeaseKeeper's renew/retry/lost/re-create behaviour on a fake clock."""
from __future__ import annotations

import logging
import math
import random
import threading
import time
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from fastflannel.agent.config import parse_config
from fastflannel.agent.errors import LeaseLost, OutOfSubnets, RegistryError, SubnetExists
from fastflannel.agent.lease import Lease, LeaseEvent
from fastflannel.agent.subnets import RACE_RETRIES, RENEW_RETRY_S, SUBNET_TTL_S, LeaseKeeper, SubnetManager
from support.fakeregistry import FakeRegistry, attrs

ME = "192.0.2.10"
OTHER = "192.0.2.12"
MY_ATTRS = attrs(ME, "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"})


class PickLast:
    """An rng whose choice() records the candidate window and returns its last element."""

    def __init__(self):
        self.windows = []

    def choice(self, seq):
        self.windows.append(list(seq))
        return seq[-1]


def manager(reg, network='{"Network":"10.5.0.0/16"}', prev=None, rng=None, margin=3600):
    return SubnetManager(reg, parse_config(network), A(ME), prev, renew_margin_s=margin,
                         rng=rng or random.Random(1), clock=reg.clock)


# -- allocation ---------------------------------------------------------------------------------

def test_fresh_allocation_is_in_range_aligned_with_24h_ttl():
    reg = FakeRegistry()
    lease = manager(reg).acquire(MY_ATTRS)
    assert lease.subnet.prefixlen == 24 and A("10.5.1.0") <= lease.subnet.network_address <= A("10.5.255.0")
    assert lease.attrs == MY_ATTRS
    assert lease.expiration == reg.clock() + SUBNET_TTL_S
    assert reg.names() == ["list_leases", "create_lease"]


def test_window_is_the_first_100_free_subnets():
    reg = FakeRegistry()
    reg.put("10.0.1.0/24", OTHER)
    reg.put("10.0.3.0/24", "192.0.2.13")
    rng = PickLast()
    lease = manager(reg, '{"Network":"10.0.0.0/8"}', rng=rng).acquire(MY_ATTRS)
    window = rng.windows[0]
    expected = [N(f"10.0.{i}.0/24") for i in range(2, 103) if i != 3]
    assert window == expected and len(window) == 100
    assert lease.subnet == N("10.0.102.0/24")


def test_random_pick_stays_in_the_window_and_spreads():
    picks = set()
    for seed in range(40):
        reg = FakeRegistry()
        picks.add(manager(reg, '{"Network":"10.0.0.0/8"}', rng=random.Random(seed)).acquire(MY_ATTRS).subnet)
    assert all(N("10.0.1.0/24") <= p and p.network_address <= A("10.0.100.0") for p in picks)
    assert len(picks) > 20


def test_smaller_leases_block_their_subnet_covering_ones_block_nothing():
    # docs/architecture.md §"Lease admission": a lease covering several subnets is no host's
    # lease; flannel lets it block them all (a 10.0.0.0/8 makes every new host fail).
    reg = FakeRegistry()
    reg.put("10.5.0.0/20", OTHER)             # covers 10.5.1.0 .. 10.5.15.0: blocks nothing
    reg.put("10.5.16.64/26", "192.0.2.13")    # inside 10.5.16.0/24: blocks it
    reg.put("10.5.18.0/23", "192.0.2.14")     # covers 10.5.18.0 and 10.5.19.0: blocks nothing
    reg.put("10.5.2.0/24", "192.0.2.15")
    rng = PickLast()
    manager(reg, rng=rng).acquire(MY_ATTRS)
    window = rng.windows[0]
    assert window[:4] == [N("10.5.1.0/24"), N("10.5.3.0/24"), N("10.5.4.0/24"), N("10.5.5.0/24")]
    assert N("10.5.16.0/24") not in window and N("10.5.18.0/24") in window


@pytest.mark.parametrize("covering", ["10.0.0.0/8", "10.5.0.0/16", "10.5.0.0/17", "0.0.0.0/0"])
def test_a_covering_lease_never_makes_a_host_run_out_of_subnets(covering):
    reg = FakeRegistry()
    cfg = '{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.11.0"}'
    reg.put(covering, "192.0.2.99")
    reg.put("10.5.10.0/24", OTHER)
    lease = manager(reg, cfg).acquire(MY_ATTRS)
    assert lease.subnet == N("10.5.11.0/24") and reg.holder(covering) == "192.0.2.99"


def test_subnet_min_max_bound_the_walk():
    reg = FakeRegistry()
    rng = PickLast()
    cfg = '{"Network":"10.5.0.0/16","SubnetMin":"10.5.200.0","SubnetMax":"10.5.202.0"}'
    manager(reg, cfg, rng=rng).acquire(MY_ATTRS)
    assert rng.windows[0] == [N("10.5.200.0/24"), N("10.5.201.0/24"), N("10.5.202.0/24")]


def test_out_of_subnets_names_the_range():
    reg = FakeRegistry()
    cfg = '{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.11.0"}'
    reg.put("10.5.10.0/24", OTHER)
    reg.put("10.5.11.0/25", "192.0.2.13")
    with pytest.raises(OutOfSubnets) as ei:
        manager(reg, cfg).acquire(MY_ATTRS)
    msg = str(ei.value)
    assert msg.startswith("out of subnets") and "10.5.10.0" in msg and "10.5.11.0" in msg
    assert "create_lease" not in reg.names()


def test_min_greater_than_max_is_out_of_subnets():
    reg = FakeRegistry()
    cfg = '{"Network":"10.5.0.0/16","SubnetMin":"10.5.20.0","SubnetMax":"10.5.10.0"}'
    with pytest.raises(OutOfSubnets):
        manager(reg, cfg).acquire(MY_ATTRS)


# -- reuse by PublicIP ----------------------------------------------------------------------------

def test_reuse_by_public_ip_updates_with_24h_ttl():
    reg = FakeRegistry()
    reg.put("10.5.7.0/24", OTHER)
    reg.put("10.5.9.0/24", ME, ttl_s=100)
    reg.clock.advance(50)
    lease = manager(reg, prev=N("10.5.40.0/24")).acquire(MY_ATTRS)
    assert lease.subnet == N("10.5.9.0/24") and lease.attrs == MY_ATTRS
    assert lease.expiration == reg.clock() + SUBNET_TTL_S
    assert reg.names() == ["list_leases", "update_lease"]
    assert reg.calls[1][1] == (N("10.5.9.0/24"), SUBNET_TTL_S)


def test_reservation_stays_a_reservation():
    reg = FakeRegistry()
    reg.put("10.5.9.0/24", ME, ttl_s=0)
    mgr = manager(reg)
    lease = mgr.acquire(MY_ATTRS)
    assert lease.subnet == N("10.5.9.0/24") and lease.expiration is None
    assert reg.calls[1] == ("update_lease", (N("10.5.9.0/24"), 0))
    assert mgr.renew(lease) is lease and reg.names() == ["list_leases", "update_lease"]
    assert mgr.renew_delay(lease) == math.inf


@pytest.mark.parametrize("incompatible", ["10.5.9.0/25", "10.6.9.0/24", "10.5.0.0/24"])
def test_incompatible_own_lease_is_deleted_then_allocate(incompatible):
    reg = FakeRegistry()
    reg.put(incompatible, ME)
    lease = manager(reg).acquire(MY_ATTRS)
    assert reg.names() == ["list_leases", "delete_lease", "create_lease"]
    assert reg.holder(incompatible) is None
    assert lease.subnet != N(incompatible) and lease.subnet.prefixlen == 24


def test_only_the_first_own_lease_in_key_order_is_considered():
    reg = FakeRegistry()
    reg.put("10.5.100.0/24", ME)
    reg.put("10.5.20.0/24", ME)        # "10.5.100.0-24" < "10.5.20.0-24" in etcd (byte) order
    lease = manager(reg).acquire(MY_ATTRS)
    assert lease.subnet == N("10.5.100.0/24")


# -- previous subnet ------------------------------------------------------------------------------

def test_previous_subnet_reused_when_free():
    reg = FakeRegistry()
    reg.put("10.5.7.0/24", OTHER)
    lease = manager(reg, prev=N("10.5.72.0/24")).acquire(MY_ATTRS)
    assert lease.subnet == N("10.5.72.0/24")
    assert reg.names() == ["list_leases", "create_lease"]


@pytest.mark.parametrize("held", ["10.5.72.0/24", "10.5.72.128/25"])
def test_previous_subnet_not_taken_from_another_host(held):
    reg = FakeRegistry()
    reg.put(held, OTHER)
    lease = manager(reg, prev=N("10.5.72.0/24")).acquire(MY_ATTRS)
    assert not lease.subnet.overlaps(N("10.5.72.0/24"))
    assert reg.holder(held) == OTHER


def test_a_covering_lease_never_moves_a_host_off_its_previous_subnet():
    reg = FakeRegistry()
    reg.put("10.5.64.0/20", OTHER)
    lease = manager(reg, prev=N("10.5.72.0/24")).acquire(MY_ATTRS)
    assert lease.subnet == N("10.5.72.0/24")


@pytest.mark.parametrize("prev", ["10.5.72.0/25", "10.6.72.0/24", "10.5.0.0/24"])
def test_incompatible_previous_subnet_ignored(prev):
    reg = FakeRegistry()
    lease = manager(reg, prev=N(prev)).acquire(MY_ATTRS)
    assert lease.subnet != N(prev) and manager(reg).config.subnet_compatible(lease.subnet)


def test_previous_subnet_beats_nothing_but_public_ip_beats_it():
    reg = FakeRegistry()
    reg.put("10.5.9.0/24", ME)
    assert manager(reg, prev=N("10.5.72.0/24")).acquire(MY_ATTRS).subnet == N("10.5.9.0/24")


# -- races ----------------------------------------------------------------------------------------

def test_lost_race_is_retried():
    reg = FakeRegistry()
    reg.fail("create_lease", *[SubnetExists("subnet already exists")] * 3)
    lease = manager(reg).acquire(MY_ATTRS)
    assert reg.names().count("create_lease") == 4 and reg.names().count("list_leases") == 4
    assert reg.holder(lease.subnet) == ME


def test_real_race_picks_another_subnet():
    reg = FakeRegistry()
    state = {"done": False}

    def sneak(method, subnet):
        if method == "create_lease" and not state["done"]:
            state["done"] = True
            reg.put(subnet, OTHER)             # another host wins this subnet first
    reg.before = sneak
    lease = manager(reg, prev=N("10.5.72.0/24")).acquire(MY_ATTRS)
    assert reg.holder("10.5.72.0/24") == OTHER
    assert lease.subnet != N("10.5.72.0/24") and reg.holder(lease.subnet) == ME


def test_race_retries_are_bounded():
    reg = FakeRegistry()
    reg.fail("create_lease", *[SubnetExists("subnet already exists")] * RACE_RETRIES)
    with pytest.raises(RegistryError, match="max retries reached trying to acquire a subnet"):
        manager(reg).acquire(MY_ATTRS)
    assert reg.names().count("create_lease") == RACE_RETRIES


def test_other_registry_errors_propagate():
    reg = FakeRegistry()
    reg.fail("list_leases", RegistryError("etcd down"))
    with pytest.raises(RegistryError, match="etcd down"):
        manager(reg).acquire(MY_ATTRS)


# -- renew ----------------------------------------------------------------------------------------

def test_renew_and_renew_delay():
    reg = FakeRegistry()
    mgr = manager(reg, margin=600)
    lease = mgr.acquire(MY_ATTRS)
    assert mgr.renew_delay(lease) == SUBNET_TTL_S - 600
    reg.clock.advance(SUBNET_TTL_S - 100)
    assert mgr.renew_delay(lease) == 0
    new = mgr.renew(lease)
    assert new.subnet == lease.subnet and new.expiration == reg.clock() + SUBNET_TTL_S
    assert reg.calls[-1] == ("update_lease", (lease.subnet, SUBNET_TTL_S))


# -- LeaseKeeper ----------------------------------------------------------------------------------

class Harness:
    """Runs a LeaseKeeper on a fake clock: every wait advances the clock and may run a hook."""

    def __init__(self, reservation=False, margin=3600, max_waits=20):
        self.reg = FakeRegistry()
        self.reg.put("10.10.16.0/20", ME, ttl_s=0 if reservation else SUBNET_TTL_S)
        self.mgr = manager(self.reg, '{"Network":"10.10.0.0/16","SubnetLen":20}', margin=margin)
        self.lease = self.mgr.acquire(MY_ATTRS)
        self.reg.calls.clear()
        self.stop = threading.Event()
        self.waits = []
        self.hooks = {}                 # wait index -> callable
        self.max_waits = max_waits
        self.keeper = LeaseKeeper(self.mgr, self.lease, wait=self.wait)

    def wait(self, timeout):
        i = len(self.waits)
        self.waits.append(timeout)
        if i in self.hooks:
            self.hooks[i]()
        if timeout == math.inf or len(self.waits) >= self.max_waits:
            self.stop.set()
            return
        self.reg.clock.advance(timeout)

    def run(self):
        self.keeper.run(self.stop)

    def event(self, kind, ip=ME, exp=None):
        """A watch event for our subnet; with our IP it carries our attrs, as our PUTs do."""
        net = N("10.10.16.0/20")
        return LeaseEvent(kind, Lease(net, (MY_ATTRS if ip == ME else attrs(ip)) if ip else None, exp))


def test_keeper_renews_at_expiry_minus_margin():
    h = Harness(max_waits=3)
    h.run()
    assert h.waits == [SUBNET_TTL_S - 3600] * 3
    assert h.reg.names() == ["get_lease", "update_lease"] * 2
    assert h.keeper.lease.expiration == h.reg.clock() + SUBNET_TTL_S   # renewed just now
    assert h.reg.holder("10.10.16.0/20") == ME


def test_keeper_retries_every_minute_after_errors(caplog):
    h = Harness(max_waits=4)
    h.reg.fail("update_lease", RegistryError("etcd down"), RegistryError("etcd down"))
    with caplog.at_level(logging.WARNING):
        h.run()
    assert h.waits == [SUBNET_TTL_S - 3600, RENEW_RETRY_S, RENEW_RETRY_S, SUBNET_TTL_S - 3600]
    assert "Error renewing lease (trying again in 1 min)" in caplog.text
    assert h.reg.names().count("update_lease") == 3


def test_keeper_added_event_with_our_ip_refreshes_expiration():
    h = Harness(max_waits=2)
    later = h.lease.expiration + 5000
    h.hooks[0] = lambda: h.keeper.on_event(h.event(LeaseEvent.ADDED, ME, later))
    h.run()
    # The first wait ended with the event; the next one is planned from the new expiration.
    assert h.waits == [SUBNET_TTL_S - 3600, 5000]
    assert "update_lease" not in h.reg.names()
    assert h.keeper.lease.expiration == later
    assert h.keeper.lease.attrs == MY_ATTRS


def test_keeper_added_event_with_other_ip_is_lease_lost():
    h = Harness()

    def taken():
        h.reg.put("10.10.16.0/20", OTHER)            # another host wrote our key
        h.keeper.on_event(h.event(LeaseEvent.ADDED, OTHER, h.reg.clock() + 1e5))
    h.hooks[0] = taken
    with pytest.raises(LeaseLost) as ei:
        h.run()
    assert str(ei.value) == "subnet 10.10.16.0/20 is now held by 192.0.2.12; refusing to overwrite it"
    assert "update_lease" not in h.reg.names() and h.reg.holder("10.10.16.0/20") == OTHER


def test_keeper_recreates_a_removed_lease():
    h = Harness(max_waits=2)

    def delete():
        h.reg.delete_lease(N("10.10.16.0/20"))
        h.keeper.on_event(h.event(LeaseEvent.REMOVED, None))
    h.hooks[0] = delete
    h.run()
    assert "create_lease" in h.reg.names() and "update_lease" not in h.reg.names()
    assert h.reg.holder("10.10.16.0/20") == ME
    assert h.keeper.lease.expiration == h.reg._lease(N("10.10.16.0/20")).expiration


def test_keeper_never_overwrites_a_subnet_taken_after_removal():
    h = Harness()

    def taken():
        h.reg.delete_lease(N("10.10.16.0/20"))
        h.keeper.on_event(h.event(LeaseEvent.REMOVED, None))
        h.reg.put("10.10.16.0/20", OTHER)           # the watch has not delivered this yet
    h.hooks[0] = taken
    with pytest.raises(LeaseLost, match="now held by 192.0.2.12"):
        h.run()
    assert h.reg.holder("10.10.16.0/20") == OTHER
    assert "update_lease" not in h.reg.names()


def test_keeper_renewal_checks_the_holder_first():
    h = Harness()
    h.hooks[0] = lambda: h.reg.put("10.10.16.0/20", OTHER)   # changed while we were partitioned
    with pytest.raises(LeaseLost):
        h.run()
    assert h.reg.holder("10.10.16.0/20") == OTHER and "update_lease" not in h.reg.names()


def test_keeper_renewal_recreates_an_expired_key():
    h = Harness(max_waits=2)
    h.hooks[0] = lambda: h.reg.delete_lease(N("10.10.16.0/20"))   # expired, event missed
    h.run()
    assert h.reg.holder("10.10.16.0/20") == ME and "create_lease" in h.reg.names()


def test_keeper_reservation_is_never_renewed():
    h = Harness(reservation=True)
    assert h.lease.expiration is None
    h.run()
    assert h.waits == [math.inf] and h.reg.names() == []


def test_keeper_ignores_other_subnets_and_snapshot_removed_then_added():
    h = Harness(max_waits=2)
    other = LeaseEvent(LeaseEvent.ADDED, Lease(N("10.10.32.0/20"), attrs(OTHER), 1.0))

    def events():
        h.keeper.on_event(other)
        h.keeper.on_event(h.event(LeaseEvent.REMOVED, None))
        h.keeper.on_event(h.event(LeaseEvent.ADDED, ME, h.lease.expiration))   # came back: ours
    h.hooks[0] = events
    h.run()
    assert "create_lease" not in h.reg.names()


def test_keeper_threaded_stop_and_lost():
    reg = FakeRegistry(clock=time.time)
    reg.put("10.10.16.0/20", ME)
    mgr = manager(reg, '{"Network":"10.10.0.0/16","SubnetLen":20}')
    keeper = LeaseKeeper(mgr, mgr.acquire(MY_ATTRS))
    keeper.POLL_S = 0.02
    stop = threading.Event()
    errors = []

    def body():
        try:
            keeper.run(stop)
        except LeaseLost as e:
            errors.append(e)
    t = threading.Thread(target=body)
    t.start()
    reg.put("10.10.16.0/20", OTHER)
    keeper.on_event(LeaseEvent(LeaseEvent.ADDED, Lease(N("10.10.16.0/20"), attrs(OTHER), time.time() + 10)))
    t.join(2)
    alive = t.is_alive()
    stop.set()                       # never leave the thread behind, even when this fails
    assert not alive and len(errors) == 1
    stop = threading.Event()
    t = threading.Thread(target=LeaseKeeper(mgr, mgr.acquire(MY_ATTRS)).run, args=(stop,))
    t.start()
    stop.set()
    t.join(2)
    assert not t.is_alive()


# -- randomized: the interval walk equals flannel's naive candidate loop -------------------------

def _naive_candidates(cfg, taken, limit=100):
    out, ip, size = [], int(cfg.subnet_min), cfg.subnet_size
    while ip <= int(cfg.subnet_max) and len(out) < limit:
        cand = N((ip, cfg.subnet_len))
        if not any(cand.overlaps(t) for t in taken):
            out.append(cand)
        ip += size
    return out


def test_free_candidates_match_naive_loop():
    from fastflannel.agent.subnets import _free_candidates
    rnd = random.Random(11)
    for _ in range(300):
        plen = rnd.randint(8, 26)
        base = rnd.getrandbits(32) & ~((1 << (32 - plen)) - 1)
        network = N((base, plen))
        sl = rnd.randint(plen + 2, min(30, plen + 10))
        cfg = parse_config(f'{{"Network":"{network}","SubnetLen":{sl}}}')
        taken = []
        for _ in range(rnd.randint(0, 30)):
            tl = rnd.randint(max(0, plen - 2), 32)
            off = rnd.getrandbits(32 - plen) if rnd.random() < 0.9 else rnd.getrandbits(32)
            taken.append(N(((base + off) & 0xFFFFFFFF, tl), strict=False))
        limit = rnd.choice([1, 5, 100])
        assert _free_candidates(cfg, taken, limit) == _naive_candidates(cfg, taken, limit)


def test_keeper_event_after_failed_renewal_cancels_the_retry():
    h = Harness(max_waits=3)
    h.reg.fail("update_lease", RegistryError("timeout"))
    exp = h.reg.clock() + 2 * SUBNET_TTL_S
    h.hooks[1] = lambda: h.keeper.on_event(h.event(LeaseEvent.ADDED, ME, exp))   # the PUT landed after all
    h.run()
    assert h.waits[:2] == [SUBNET_TTL_S - 3600, RENEW_RETRY_S]
    assert h.waits[2] == exp - h.reg.clock() - 3600
    assert h.reg.names().count("update_lease") == 1
