"""PeerTracker: flannel's LeaseWatcher cache (docs/flannel-compat.md §"Watch"), plus pruning on reset."""
from __future__ import annotations

import logging
from ipaddress import IPv4Network as N

from fastflannel.agent.lease import Lease, LeaseEvent
from fastflannel.agent.peers import PeerTracker
from support.fakeregistry import attrs

OWN = N("10.5.1.0/24")
ADDED, REMOVED = LeaseEvent.ADDED, LeaseEvent.REMOVED


def lease(net, ip, mac=None, exp=1000.0):
    """A vxlan lease; its VtepMAC is derived from the PublicIP unless given (one MAC, one host)."""
    mac = mac or f"aa:aa:aa:aa:aa:{int(ip.rsplit('.', 1)[1]):02x}"
    return Lease(N(net), attrs(ip, "vxlan", {"VNI": 1, "VtepMAC": mac}), exp)


def kinds(events):
    return [(e.kind, str(e.lease.subnet)) for e in events]


def test_reset_from_empty_adds_everything_but_own():
    t = PeerTracker(OWN)
    evs = t.reset([lease("10.5.1.0/24", "192.0.2.10"), lease("10.5.2.0/24", "192.0.2.11"),
                   lease("10.5.3.0/24", "192.0.2.12")])
    assert kinds(evs) == [(ADDED, "10.5.2.0/24"), (ADDED, "10.5.3.0/24")]
    assert [str(lease.subnet) for lease in t.leases()] == ["10.5.2.0/24", "10.5.3.0/24"]


def test_reset_diffs_new_changed_vanished_unchanged():
    t = PeerTracker(OWN)
    old2, old3 = lease("10.5.2.0/24", "192.0.2.11"), lease("10.5.3.0/24", "192.0.2.12")
    t.reset([old2, old3, lease("10.5.4.0/24", "192.0.2.13")])
    evs = t.reset([lease("10.5.2.0/24", "192.0.2.11", exp=5000.0),          # renewal only: no event
                   lease("10.5.4.0/24", "192.0.2.13", mac="aa:aa:aa:aa:aa:02"),  # new MAC
                   lease("10.5.5.0/24", "192.0.2.14")])
    assert kinds(evs) == [(REMOVED, "10.5.3.0/24"), (ADDED, "10.5.4.0/24"), (ADDED, "10.5.5.0/24")]
    assert evs[0].lease == old3                      # removed carries the cached lease
    assert evs[1].lease.attrs.backend_data["VtepMAC"] == "aa:aa:aa:aa:aa:02"
    assert {str(lease.subnet) for lease in t.leases()} == {"10.5.2.0/24", "10.5.4.0/24", "10.5.5.0/24"}


def test_reset_to_empty_removes_all():
    t = PeerTracker(OWN)
    t.reset([lease("10.5.2.0/24", "192.0.2.11")])
    assert kinds(t.reset([])) == [(REMOVED, "10.5.2.0/24")]
    assert t.leases() == []


def test_apply_added_replaces_or_appends():
    t = PeerTracker(OWN)
    t.reset([lease("10.5.2.0/24", "192.0.2.11")])
    newer = lease("10.5.2.0/24", "192.0.2.21", mac="ba:bb:bb:bb:bb:bb")
    evs = t.apply([LeaseEvent(ADDED, newer), LeaseEvent(ADDED, lease("10.5.3.0/24", "192.0.2.12"))])
    assert kinds(evs) == [(ADDED, "10.5.2.0/24"), (ADDED, "10.5.3.0/24")]
    assert t.leases()[0] == newer and len(t.leases()) == 2


def test_leases_stay_in_admission_order_through_updates_and_readds():
    """leases() is admission order: an update keeps its place, a re-added key goes last."""
    t = PeerTracker(OWN)
    t.reset([lease("10.5.4.0/24", "192.0.2.14"), lease("10.5.2.0/24", "192.0.2.12")])
    t.apply([LeaseEvent(ADDED, lease("10.5.3.0/24", "192.0.2.13"))])
    t.apply([LeaseEvent(ADDED, lease("10.5.4.0/24", "192.0.2.24", mac="ba:bb:bb:bb:bb:04"))])   # update
    t.apply([LeaseEvent(REMOVED, Lease(N("10.5.2.0/24"), None))])
    t.apply([LeaseEvent(ADDED, lease("10.5.2.0/24", "192.0.2.12"))])                          # re-added
    assert [str(x.subnet) for x in t.leases()] == ["10.5.4.0/24", "10.5.3.0/24", "10.5.2.0/24"]
    assert str(t.leases()[0].attrs.public_ip) == "192.0.2.24"


def test_apply_removed_returns_cached_attrs():
    t = PeerTracker(OWN)
    cached = lease("10.5.2.0/24", "192.0.2.11", mac="cc:cc:cc:cc:cc:cc")
    t.reset([cached])
    evs = t.apply([LeaseEvent(REMOVED, Lease(N("10.5.2.0/24"), None))])     # etcd DELETE: no attrs
    assert len(evs) == 1 and evs[0].kind == REMOVED and evs[0].lease == cached
    assert evs[0].lease.attrs.backend_data["VtepMAC"] == "cc:cc:cc:cc:cc:cc"
    assert t.leases() == []


def test_apply_removed_unknown_is_logged_and_dropped(caplog):
    t = PeerTracker(OWN)
    with caplog.at_level(logging.INFO, logger="fastflannel.peers"):
        assert t.apply([LeaseEvent(REMOVED, Lease(N("10.5.9.0/24"), None))]) == []
    assert "10.5.9.0/24" in caplog.text and "not found" in caplog.text


def test_apply_drops_own_subnet_and_attrless_adds():
    t = PeerTracker(OWN)
    evs = t.apply([LeaseEvent(ADDED, lease("10.5.1.0/24", "192.0.2.10")),
                   LeaseEvent(REMOVED, Lease(OWN, None)),
                   LeaseEvent(ADDED, Lease(N("10.5.7.0/24"), None))])
    assert evs == [] and t.leases() == []


def test_remove_then_add_same_subnet_new_host():
    t = PeerTracker(OWN)
    t.reset([lease("10.5.2.0/24", "192.0.2.11")])
    evs = t.apply([LeaseEvent(REMOVED, Lease(N("10.5.2.0/24"), None)),
                   LeaseEvent(ADDED, lease("10.5.2.0/24", "192.0.2.99"))])
    assert kinds(evs) == [(REMOVED, "10.5.2.0/24"), (ADDED, "10.5.2.0/24")]
    assert str(evs[0].lease.public_ip) == "192.0.2.11" and str(evs[1].lease.public_ip) == "192.0.2.99"


def test_random_event_sequences_match_a_naive_model():
    import random
    rnd = random.Random(7)
    t = PeerTracker(OWN)
    model = {}
    nets = [f"10.5.{i}.0/24" for i in range(1, 8)]
    for _ in range(500):
        n = rnd.choice(nets)
        if rnd.random() < 0.1:
            listing = [lease(x, f"192.0.2.{rnd.randint(1, 3)}") for x in nets if rnd.random() < 0.5]
            t.reset(listing)
            model = {lease.subnet: lease for lease in listing if lease.subnet != OWN}
        elif rnd.random() < 0.5:
            new = lease(n, f"192.0.2.{rnd.randint(1, 3)}")
            t.apply([LeaseEvent(ADDED, new)])
            if new.subnet != OWN:
                model[new.subnet] = new
        else:
            evs = t.apply([LeaseEvent(REMOVED, Lease(N(n), None))])
            expect = model.pop(N(n), None)
            assert [e.lease for e in evs] == ([expect] if expect else [])
        assert {lease.subnet: lease for lease in t.leases()} == model
