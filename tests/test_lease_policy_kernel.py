"""Lease admission and shared kernel state against real devices (issue 8, defects 3, 4, 5, 6).

The hosts are Lab namespaces on one underlay bridge, each running the backend driver of
tests/support/kernel_nodes.py (one backend object fed JSON commands); peers are fake leases, no
etcd. Kernel state is read back with iproute2 and traffic goes only between the namespaces made
here.

- defect 3: a copied lease (another subnet, the same PublicIP and VtepMAC) shares the live peer's
  FDB entry; removing the copy must leave the entry, so traffic never stops.
- defect 4: two backends on one machine (one state dir, as a lab without per-host state dirs)
  never share a VTEP MAC.
- defect 5: a lease outside Network, or covering it, is never programmed by any backend.
- defect 6: an unexpected exception in one peer's kernel call never stops the other peers' sync,
  removal or repair, and a peer's clean-up runs all its steps; a lease with a bad VtepMAC never
  removes a live peer's neighbour when it goes.
"""
from __future__ import annotations

import re

import pytest

from support.kernel_nodes import assert_no_peer_state, assert_peer_state, ping

pytestmark = pytest.mark.netns

HOSTGW = {"Type": "host-gw"}


def vxlan_nodes(nodes, names=("h1", "h2", "h3")):
    """Backends up on every node; the nodes but the first know the first (h1 is under test), so
    h1's pings are answered."""
    ns = nodes(*names)
    for n in ns:
        n.start()
        n.setup()
    for n in ns[1:]:
        n.call("add_peer", lease=ns[0].lease())
    return ns


def fdb(node) -> str:
    return node.sh("bridge fdb show dev flannel.100")


def mac_of(node) -> str:
    return node.attrs["BackendData"]["VtepMAC"]


# -- defect 3: shared FDB entries are reference-counted ------------------------------------------

def test_removing_a_copied_lease_keeps_the_live_peers_fdb_entry(nodes):
    h1, h2 = vxlan_nodes(nodes, ("h1", "h2"))
    h1.call("add_peer", lease=h2.lease())
    copy = dict(h2.lease(), subnet="10.10.48.0/20")          # same PublicIP and VtepMAC
    h1.call("add_peer", lease=copy)
    assert f"{mac_of(h2)} dst {h2.ip} self permanent" in fdb(h1)
    h1.call("remove_peer", lease=copy)
    # The live peer keeps its FDB entry: traffic flows at once, not after the 10 s repair.
    assert_peer_state(h1, h2)
    assert ping(h1, "10.10.16.0")
    assert h1.sh("ip route show 10.10.48.0/20").strip() == ""
    assert "10.10.48.0 " not in h1.sh("ip neigh show dev flannel.100")
    # The last lease that uses the entry takes it with it.
    h1.call("remove_peer", lease=h2.lease())
    assert_no_peer_state(h1, h2)


def test_a_copied_lease_removed_first_via_sync_keeps_the_entry(nodes):
    h1, h2 = vxlan_nodes(nodes, ("h1", "h2"))
    copy = dict(h2.lease(), subnet="10.10.48.0/20")
    h1.call("sync_peers", leases=[h2.lease(), copy])
    h1.call("sync_peers", leases=[h2.lease()])
    assert_peer_state(h1, h2)
    assert ping(h1, "10.10.16.0")


# -- defect 4: one machine, one state dir, distinct MACs ------------------------------------------

def test_two_backends_on_one_machine_never_share_a_vtep_mac(nodes, tmp_path):
    shared = str(tmp_path / "one-var-lib-fastflannel")
    h1, h2 = nodes("h1", "h2")
    h1.start(state_dir=shared)
    h2.start(state_dir=shared)
    assert mac_of(h1) != mac_of(h2)
    # Each keeps its own across a restart (its device deleted too: the file decides).
    mac1, mac2 = mac_of(h1), mac_of(h2)
    for n, mac in ((h1, mac1), (h2, mac2)):
        n.start(state_dir=shared)
        assert mac_of(n) == mac


# -- defect 5: nothing outside Network is ever programmed -----------------------------------------

OUTSIDE = [
    {"subnet": "192.168.77.0/24", "ip": "192.0.2.77"},       # outside Network 10.0.0.0/8
    {"subnet": "10.0.0.0/8", "ip": "192.0.2.78"},            # Network itself: covers every host
    {"subnet": "0.0.0.0/0", "ip": "192.0.2.79"},
]


def test_vxlan_never_programs_a_lease_outside_the_network(nodes):
    h1, h2 = vxlan_nodes(nodes, ("h1", "h2"))
    bad = [dict(b, type="vxlan", data={"VNI": 100, "VtepMAC": f"0a:00:00:00:77:{i:02x}"})
           for i, b in enumerate(OUTSIDE)]
    for lease in bad:
        h1.call("add_peer", lease=lease)
    h1.call("sync_peers", leases=[h2.lease(), *bad])
    assert re.findall(r"^\S+", h1.sh("ip route show dev flannel.100"), re.M) == ["10.10.16.0/20"]
    assert "0a:00:00:00:77" not in fdb(h1) and "0a:00:00:00:77" not in h1.sh("ip neigh")
    assert "default" not in h1.sh("ip route show dev flannel.100")
    assert_peer_state(h1, h2)
    assert ping(h1, "10.10.16.0")


def test_hostgw_never_programs_a_lease_outside_the_network(nodes):
    (h1,) = nodes("h1")
    h1.start(kind="host-gw", cfg=HOSTGW)
    h1.setup()
    bad = [dict(b, type="host-gw") for b in OUTSIDE]
    for lease in bad:
        h1.call("add_peer", lease=lease)
    h1.call("sync_peers", leases=[{"subnet": "10.10.16.0/20", "ip": "192.0.2.11", "type": "host-gw"}, *bad])
    routes = h1.sh("ip route")
    assert "10.10.16.0/20 via 192.0.2.11 dev eth0" in routes
    assert "192.168.77.0" not in routes and "10.0.0.0/8" not in routes
    assert routes.count("default") == 1                    # the lab's own default route only


# -- defect 6: one bad peer never stops the others -------------------------------------------------

def test_a_failing_peer_never_stops_the_others_sync(nodes):
    h1, h2, h3 = vxlan_nodes(nodes)
    h1.call("inject", fn="neigh_replace", match="10.10.16.0", exc="RuntimeError")
    h1.call("sync_peers", leases=[h2.lease(), h3.lease()])     # h2's neighbour fails first
    assert_peer_state(h1, h3)
    assert ping(h1, "10.10.32.0")


def test_a_failing_step_never_skips_the_rest_of_a_peers_cleanup(nodes):
    h1, h2, h3 = vxlan_nodes(nodes)
    h1.call("sync_peers", leases=[h2.lease(), h3.lease()])
    h1.call("inject", fn="neigh_delete", match="10.10.16.0", exc="RuntimeError")
    h1.call("remove_peer", lease=h2.lease())
    assert mac_of(h2) not in fdb(h1)                           # the later steps still ran
    assert h1.sh("ip route show 10.10.16.0/20").strip() == ""
    assert_peer_state(h1, h3)


def test_check_repairs_the_other_peers_when_one_fails(nodes):
    h1, h2, h3 = vxlan_nodes(nodes)
    h1.call("sync_peers", leases=[h2.lease(), h3.lease()])
    h1.sh("ip route del 10.10.16.0/20 && ip route del 10.10.32.0/20")
    h1.call("inject", fn="route_replace", match="10.10.16.0/20", exc="RuntimeError")
    h1.call("check")
    assert_peer_state(h1, h3)
    assert ping(h1, "10.10.32.0")


def test_hostgw_a_failing_peer_never_stops_the_others_sync(nodes):
    (h1,) = nodes("h1")
    h1.start(kind="host-gw", cfg=HOSTGW)
    h1.setup()
    h1.call("inject", fn="route_replace", match="10.10.16.0/20", exc="RuntimeError")
    h1.call("sync_peers", leases=[{"subnet": "10.10.16.0/20", "ip": "192.0.2.11", "type": "host-gw"},
                                  {"subnet": "10.10.32.0/20", "ip": "192.0.2.12", "type": "host-gw"}])
    assert "10.10.32.0/20 via 192.0.2.12 dev eth0" in h1.sh("ip route")


def test_removing_a_bad_vtep_mac_lease_leaves_the_live_peer_alone(nodes):
    h1, h2 = vxlan_nodes(nodes, ("h1", "h2"))
    h1.call("add_peer", lease=h2.lease())
    # Another prefix length at h2's network address, with a VtepMAC no encoder accepts: it
    # is refused when added, and its removal must not touch h2's neighbour (the same IP).
    bad = {"subnet": "10.10.16.0/24", "ip": "192.0.2.77", "type": "vxlan",
           "data": {"VNI": 100, "VtepMAC": "zz:zz:zz:zz:zz:zz"}}
    h1.call("add_peer", lease=bad)
    h1.call("remove_peer", lease=bad)
    assert_peer_state(h1, h2)
    assert ping(h1, "10.10.16.0")
