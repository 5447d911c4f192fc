"""Observability end to end: namespace hosts running the daemon against a real etcd, real traffic
between containers, `/metrics` parsed with prometheus_client's parser, `/status` and
`fastflannel status` from the daemons' status sockets (docs/architecture.md §"Observability")."""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from fastflannel.lab import wait_for
from fastflannel.lab.cluster import PREFIX, Cluster, seed_config
from support import scrape
from support.overlay import program

pytestmark = [pytest.mark.netns, pytest.mark.etcd]

HEALTHZ = ["-healthz-ip=127.0.0.1", "-healthz-port=8471"]
FLOW_N, FLOW_SIZE = 400, 1000          # datagrams, UDP payload bytes
INNER_LEN = FLOW_SIZE + 28             # + UDP 8 + IPv4 20: the inner packet's total length


def _subnet(cluster: Cluster, name: str) -> str:
    env = scrape_env(cluster, name)
    return str(ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network)


def scrape_env(cluster: Cluster, name: str) -> dict:
    with open(cluster.subnet_file(name)) as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line)


def _sock(cluster: Cluster, name: str) -> str:
    return os.path.join(cluster.host_dir(name), "fastflannel.sock")


def _peer(series, name: str, cluster: Cluster, peer: str, **labels) -> float:
    return scrape.value(series, name, subnet=_subnet(cluster, peer), public_ip=cluster.hosts[peer].ip, **labels)


def _status_cli(cluster: Cluster, name: str, *args: str) -> subprocess.CompletedProcess:
    return _status_in(cluster.lab, cluster.hosts[name].ns, cluster.subnet_file(name), *args)


def _status_in(lab, ns: str, subnet_file: str, *args: str) -> subprocess.CompletedProcess:
    """`fastflannel status` run inside namespace ns, for the daemon of that subnet file."""
    return lab.sh(ns, " ".join([sys.executable, "-m", "fastflannel.agent.cli", "status", "--subnet-file",
                                subnet_file, *args]), check=False)


def _udp_flow(cluster: Cluster, src: str, dst: str, port: int) -> None:
    """FLOW_N datagrams of FLOW_SIZE bytes from src's container to dst's, all received."""
    lab, a, b = cluster.lab, cluster.containers[src], cluster.containers[dst]
    recv = subprocess.Popen(lab.ns_cmd(b.ns, sys.executable, program("udp_count.py"), "recv", b.ip, str(port),
                                       str(FLOW_N), "20"), stdout=subprocess.PIPE, text=True)
    try:
        assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
        sent = lab.sh(a.ns, f"{sys.executable} {program('udp_count.py')} send {b.ip} {port} {FLOW_N} {FLOW_SIZE}")
        assert sent.stdout.strip() == f"sent {FLOW_N}"
        out, _ = recv.communicate(timeout=30)
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    assert out.split() == ["got", str(FLOW_N), str(FLOW_N * FLOW_SIZE)], out


@pytest.mark.parametrize("flags", [[], ["-fastpath-offload=false", "-fastpath-workers=2"]],
                         ids=["offload", "tier1-w2"])
def test_per_peer_counters_move_by_exactly_the_packets_sent(lab, flags):
    cluster = Cluster(lab, seed_config("udp"), extra_flags=HEALTHZ + flags)
    cluster.start_all()
    cluster.wait_all()
    cluster.add_containers()
    for a, b in (("h1", "h2"), ("h1", "h3"), ("h2", "h3")):
        assert cluster.ping(a, b, timeout=15), cluster.log(a)[-2000:]
    s1, types = scrape.metrics(_sock(cluster, "h1"))
    s2, _ = scrape.metrics(_sock(cluster, "h2"))
    tx = lambda s: (_peer(s, "fastflannel_peer_packets_total", cluster, "h2", direction="tx"),  # noqa: E731
                    _peer(s, "fastflannel_peer_bytes_total", cluster, "h2", direction="tx"))
    rx = lambda s: (_peer(s, "fastflannel_peer_packets_total", cluster, "h1", direction="rx"),  # noqa: E731
                    _peer(s, "fastflannel_peer_bytes_total", cluster, "h1", direction="rx"))
    h3_before = _peer(s1, "fastflannel_peer_packets_total", cluster, "h3", direction="tx")
    _udp_flow(cluster, "h1", "h2", 7001)
    t1, _ = scrape.metrics(_sock(cluster, "h1"))
    t2, _ = scrape.metrics(_sock(cluster, "h2"))
    # the sender's tx for h2 and the receiver's rx for h1 moved by exactly the flow
    assert (tx(t1)[0] - tx(s1)[0], tx(t1)[1] - tx(s1)[1]) == (FLOW_N, FLOW_N * INNER_LEN)
    assert (rx(t2)[0] - rx(s2)[0], rx(t2)[1] - rx(s2)[1]) == (FLOW_N, FLOW_N * INNER_LEN)
    assert _peer(t1, "fastflannel_peer_packets_total", cluster, "h3", direction="tx") == h3_before
    # the totals agree, and nothing was dropped on the way
    fp = lambda s, d, k: scrape.value(s, f"fastflannel_fastpath_{k}_total", device="udp", direction=d)  # noqa: E731
    assert fp(t1, "tx", "packets") - fp(s1, "tx", "packets") == FLOW_N
    assert fp(t2, "rx", "bytes") - fp(s2, "rx", "bytes") == FLOW_N * INNER_LEN
    for reason in ("send_error", "spoofed", "dst_special", "dst_foreign", "other"):
        assert _peer(t2, "fastflannel_peer_dropped_packets_total", cluster, "h1", reason=reason) == 0
    # one series per live peer, and the rest of the page
    assert set(scrape.named(t1, "fastflannel_peer_packets_total")) == {
        frozenset({"subnet": _subnet(cluster, p), "public_ip": cluster.hosts[p].ip, "direction": d}.items())
        for p in ("h2", "h3") for d in ("tx", "rx")}
    assert scrape.value(t1, "fastflannel_peers") == 2 and scrape.value(t1, "fastflannel_ready") == 1
    assert types["fastflannel_peer_packets"] == "counter" and types["fastflannel_lease_event_apply_seconds"] == \
        "histogram"
    assert scrape.value(t1, "fastflannel_lease_info", subnet=_subnet(cluster, "h1"), public_ip=cluster.hosts["h1"].ip,
                        backend="udp") == 1
    assert scrape.value(t1, "fastflannel_etcd_connection_state", endpoint=lab.etcd_endpoint, state="connected") == 1
    assert _peer(t1, "fastflannel_peer_last_receive_timestamp_seconds", cluster, "h2") > 0
    # the TUN's own counters are the kernel's view: its tx is what it handed to the fast path
    assert scrape.value(t1, "fastflannel_device_packets_total", device="flannel0", direction="tx") >= FLOW_N
    # the health port serves the same page
    code = ("import urllib.request as u; r = u.urlopen('http://127.0.0.1:8471/metrics', timeout=5); "
            "print(r.status); print(r.read().decode().count('fastflannel_peer_packets_total{'))")
    out = lab.sh(cluster.hosts["h1"].ns, f"{sys.executable} -c \"{code}\"").stdout.split()
    assert out == ["200", "4"], out


def test_removed_peer_disappears_from_metrics_and_status(lab):
    cluster = Cluster(lab, seed_config("udp"), extra_flags=HEALTHZ)
    cluster.start_all()
    cluster.wait_all()
    cluster.add_containers()
    assert cluster.ping("h1", "h2", timeout=15) and cluster.ping("h1", "h3", timeout=15)
    sock = _sock(cluster, "h1")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    # `fastflannel status` shows every peer, with its counters
    out = _status_cli(cluster, "h1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "ready" in text and f"lease     {_subnet(cluster, 'h1')}  public IP {cluster.hosts['h1'].ip}" in text
    assert f"etcd      {lab.etcd_endpoint}  connected" in text and "backend   udp  device flannel0" in text
    for p in ("h2", "h3"):
        row = next(line for line in text.splitlines() if line.startswith(_subnet(cluster, p) + " "))
        assert row.split()[1] == cluster.hosts[p].ip and row.endswith("ago"), row
    doc = json.loads(_status_cli(cluster, "h1", "--json").stdout)
    assert {p["subnet"] for p in doc["peers"]} == {_subnet(cluster, "h2"), _subnet(cluster, "h3")}
    assert all(p["tx_packets"] >= 1 and p["rx_packets"] >= 1 for p in doc["peers"]), doc["peers"]
    via_port = json.loads(_status_cli(cluster, "h1", "--json", "--url", "http://127.0.0.1:8471").stdout)
    assert via_port["lease"] == doc["lease"]
    before, _ = scrape.metrics(sock)
    h2_tx = _peer(before, "fastflannel_peer_packets_total", cluster, "h2", direction="tx")
    # h3 goes away: its daemon stops (removing its socket), the admin deletes its lease
    h3_sock, h3_subnet = _sock(cluster, "h3"), _subnet(cluster, "h3")
    cluster.stop("h3")
    assert not os.path.exists(h3_sock)
    lab.etcdctl("del", f"{PREFIX}/subnets/{h3_subnet.replace('/', '-')}")

    def h3_gone():
        s, _ = scrape.metrics(sock)
        return not any(dict(labels).get("subnet") == h3_subnet for (_, labels) in s)
    assert wait_for(h3_gone, 10), cluster.log("h1")[-2000:]
    after, _ = scrape.metrics(sock)
    assert scrape.value(after, "fastflannel_peers") == 1
    assert _peer(after, "fastflannel_peer_packets_total", cluster, "h2", direction="tx") == h2_tx
    assert scrape.value(after, "fastflannel_lease_events_total", kind="removed") == \
        scrape.value(before, "fastflannel_lease_events_total", kind="removed") + 1
    assert scrape.value(after, "fastflannel_lease_event_apply_seconds_count") == \
        scrape.value(before, "fastflannel_lease_event_apply_seconds_count") + 1
    doc = scrape.status(sock)
    assert [p["subnet"] for p in doc["peers"]] == [_subnet(cluster, "h2")]
    assert h3_subnet not in _status_cli(cluster, "h1").stdout


def test_status_before_etcd_answers_and_after_a_crash(lab):
    """A daemon whose etcd refuses connections: not ready, no lease, etcd unreachable, said by
    status and by /metrics. SIGKILL leaves its socket file behind; the next daemon replaces it."""
    host = lab.add_host("h1")                 # no etcd in this lab
    run_dir = os.path.join(lab.tmp, "h1")
    os.makedirs(run_dir)
    subnet_file, sock = os.path.join(run_dir, "subnet.env"), os.path.join(run_dir, "fastflannel.sock")
    dead = "http://127.0.0.1:1"
    argv = [sys.executable, "-m", "fastflannel.agent.cli", "-iface=eth0", f"-etcd-endpoints={dead}",
            f"-subnet-file={subnet_file}", *HEALTHZ]
    env = dict(os.environ, FASTFLANNEL_STATE_DIR=run_dir)
    for attempt in range(2):
        p = lab.spawn(host.ns, argv, f"h1-{attempt}.log", env=env)
        assert wait_for(lambda: _answers(sock) and scrape.status(sock)["etcd"]["state"] == "unreachable", 15), \
            lab.log(f"h1-{attempt}.log")
        text = _status_in(lab, host.ns, subnet_file).stdout
        assert "NOT READY" in text and "lease     none yet" in text, text
        assert f"etcd      {dead}  unreachable" in text, text
        s, _ = scrape.metrics(sock)
        assert scrape.value(s, "fastflannel_ready") == 0
        assert scrape.value(s, "fastflannel_etcd_connection_state", endpoint=dead, state="unreachable") == 1
        assert ("fastflannel_lease_info", frozenset()) not in s
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)
        assert os.path.exists(sock)           # a stale socket: the next start must replace it


def _answers(sock: str) -> bool:
    try:
        return scrape.get(sock, "/healthz")[0] == 200
    except OSError:
        return False


def test_etcd_outage_shows_in_metrics_and_status(lab):
    """etcd stops under a running daemon: the watch fails (a reconnect counted), the state goes
    unreachable; etcd comes back on the same data dir: connected again."""
    cluster = Cluster(lab, seed_config("udp"), hosts=("h1",))
    cluster.start_all()
    cluster.wait_all()
    sock = _sock(cluster, "h1")
    state = lambda: scrape.status(sock)["etcd"]["state"]  # noqa: E731
    assert wait_for(lambda: state() == "connected", 10)
    before, _ = scrape.metrics(sock)
    assert lab.etcd is not None
    lab.etcd.stop()
    assert wait_for(lambda: state() == "unreachable", 15), cluster.log("h1")[-2000:]
    during, _ = scrape.metrics(sock)
    assert scrape.value(during, "fastflannel_etcd_connection_state", endpoint=lab.etcd_endpoint,
                        state="unreachable") == 1
    assert scrape.value(during, "fastflannel_etcd_watch_reconnects_total", reason="error") > \
        scrape.value(before, "fastflannel_etcd_watch_reconnects_total", reason="error")
    assert f"etcd      {lab.etcd_endpoint}  unreachable" in _status_cli(cluster, "h1").stdout
    lab.etcd.start(state=lab.etcd.state)
    assert wait_for(lambda: state() == "connected", 20), cluster.log("h1")[-2000:]


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_metrics_and_status_with_kernel_backends(lab, backend):
    cluster = Cluster(lab, seed_config(backend), hosts=("h1", "h2"), extra_flags=["-ip-masq", "-iptables-resync=1"])
    cluster.start_all()
    cluster.wait_all()
    cluster.add_containers()
    assert cluster.ping("h1", "h2", timeout=15)
    s, _ = scrape.metrics(_sock(cluster, "h1"))
    names = {n for n, _ in s}
    assert not any(n.startswith(("fastflannel_fastpath_", "fastflannel_peer_")) for n in names), names
    assert scrape.value(s, "fastflannel_peers") == 1 and scrape.value(s, "fastflannel_ready") == 1
    assert scrape.value(s, "fastflannel_lease_info", subnet=_subnet(cluster, "h1"),
                        public_ip=cluster.hosts["h1"].ip, backend=backend) == 1
    devices = scrape.named(s, "fastflannel_device_packets_total")
    if backend == "vxlan":
        # the kernel's link statistics of flannel.100: the pings went through it
        assert scrape.value(s, "fastflannel_device_packets_total", device="flannel.100", direction="tx") >= 1
        assert scrape.value(s, "fastflannel_device_packets_total", device="flannel.100", direction="rx") >= 1
    else:
        assert devices == {}                  # host-gw has no device of its own
    text = _status_cli(cluster, "h1").stdout
    assert f"{_subnet(cluster, 'h2')}  {cluster.hosts['h2'].ip}" in text
    assert f"the {backend} backend forwards in the kernel" in text
    # repairs: someone deletes the route to h2 (and, for vxlan, h2's FDB entry); the 10 s check
    # re-adds them and counts each; someone flushes the masquerade chain: the resync counts it
    ns, h2 = cluster.hosts["h1"].ns, _subnet(cluster, "h2")
    lab.sh(ns, f"ip route del {h2}")
    if backend == "vxlan":
        lab.sh(ns, "bridge fdb show dev flannel.100 | grep dst | while read mac rest; do "
                   "bridge fdb del $mac dev flannel.100 $rest; done")
    lab.sh(ns, "iptables -t nat -F FLANNEL-POSTRTG")
    sock = _sock(cluster, "h1")
    repairs = lambda obj: scrape.value(scrape.metrics(sock)[0], "fastflannel_backend_repairs_total",  # noqa: E731
                                       object=obj)
    assert wait_for(lambda: repairs("route") == 1, 15), cluster.log("h1")[-2000:]
    assert repairs("fdb") == (1 if backend == "vxlan" else 0) and repairs("neighbour") == 0
    after, _ = scrape.metrics(sock)
    assert scrape.value(after, "fastflannel_iptables_resyncs_total", rules="ip-masq") >= 1
    assert scrape.value(after, "fastflannel_iptables_resyncs_total", rules="forward") == 0
    assert cluster.ping("h1", "h2", timeout=5)
