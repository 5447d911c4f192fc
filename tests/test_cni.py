"""The CNI plugin (`fastflannel-cni`, installed as `flannel`): flannel's delegate config from
subnet.env, the CNI protocol (errors, versions), and ADD/CHECK/DEL with Debian's real bridge,
host-local, loopback and portmap plugins in namespaces, across hosts running the daemon."""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys

import pytest

from fastflannel.agent import cni
from fastflannel.lab import tcp_transfer, wait_for
from fastflannel.lab.cluster import Cluster, seed_config
from support import cniruntime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFLIST = os.path.join(ROOT, "contrib", "cni", "10-flannel.conflist")
SUBNET_ENV = ("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=10.10.16.1/20\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ={masq}\n")


def _write(tmp_path, text: str, name: str = "subnet.env") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- subnet.env and the delegate config (flannel's loadFlannelSubnetEnv / doCmdAdd) -------------
def test_delegate_config_is_flannels(tmp_path):
    se = cni.load_subnet_env(_write(tmp_path, SUBNET_ENV.format(masq="false")))
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "delegate": {"hairpinMode": True, "isDefaultGateway": True}}
    assert cni.delegate_config(conf, se) == {
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "hairpinMode": True,
        "isDefaultGateway": True, "ipMasq": True, "mtu": 1450, "isGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.10.16.0/20"}]],
                 "routes": [{"dst": "10.0.0.0/8"}]}}
    # stored as Go's json.Marshal of the map would: sorted keys, no spaces
    assert cni.go_json(cni.delegate_config(conf, se)) == (
        b'{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":true,"ipam":{"ranges":[[{"subnet":'
        b'"10.10.16.0/20"}]],"routes":[{"dst":"10.0.0.0/8"}],"type":"host-local"},"isDefaultGateway":'
        b'true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}')


def test_flannel_masquerading_turns_the_bridges_off_and_given_values_win(tmp_path):
    se = cni.load_subnet_env(_write(tmp_path, SUBNET_ENV.format(masq="true")))
    d = cni.delegate_config({"name": "n", "runtimeConfig": {"portMappings": []},
                             "ipam": {"dataDir": "/x", "routes": [{"dst": "192.0.2.0/24"}]},
                             "delegate": {"type": "ipvlan", "mtu": 1400, "master": "eth0"}}, se)
    assert d["ipMasq"] is False and d["mtu"] == 1400 and "isGateway" not in d
    assert d["runtimeConfig"] == {"portMappings": []} and "cniVersion" not in d
    assert d["ipam"] == {"dataDir": "/x", "type": "host-local", "ranges": [[{"subnet": "10.10.16.0/20"}]],
                         "routes": [{"dst": "192.0.2.0/24"}, {"dst": "10.0.0.0/8"}]}


def test_dual_stack_and_deduplicated_networks(tmp_path):
    se = cni.load_subnet_env(_write(tmp_path, "FLANNEL_NETWORK=10.0.0.0/8,10.0.0.0/8\n"
                                    "FLANNEL_SUBNET=10.10.16.1/20\nFLANNEL_IPV6_NETWORK=2001:db8::/56\n"
                                    "FLANNEL_IPV6_SUBNET=2001:db8:0:10::1/64\nFLANNEL_MTU=1450\n"
                                    "FLANNEL_IPMASQ=false\n"))
    ipam = cni.delegate_config({"name": "n"}, se)["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.10.16.0/20"}], [{"subnet": "2001:db8:0:10::/64"}]]
    assert ipam["routes"] == [{"dst": "10.0.0.0/8"}, {"dst": "2001:db8::/56"}]


@pytest.mark.parametrize("text, message", [
    ("FLANNEL_SUBNET=10.10.16.1/20\nFLANNEL_MTU=1450\n",
     "is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_IPMASQ"),
    (SUBNET_ENV.format(masq="false").replace("1450", "big"), 'parsing "big": invalid syntax'),
    (SUBNET_ENV.format(masq="false").replace("10.10.16.1/20", "10.10.16.1"), "invalid CIDR address"),
])
def test_unusable_subnet_env(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        cni.load_subnet_env(_write(tmp_path, text))


@pytest.mark.parametrize("delegate, message", [
    ({"name": "x"}, "must not have 'name'"), ({"ipam": {}}, "must not have 'ipam'"),
    ({"type": 7}, "must have (string) 'type'"),
])
def test_delegate_may_not_set_what_flannel_sets(tmp_path, delegate, message):
    se = cni.load_subnet_env(_write(tmp_path, SUBNET_ENV.format(masq="false")))
    with pytest.raises(cni.CNIError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cni.delegate_config({"name": "n", "delegate": delegate}, se)


def test_check_gives_gateway_less_routes_their_gateway():
    """What IPAM installed for {"dst": net} is "net via gateway"; old bridge CHECKs look for the
    literal route (plugins #886), so CHECK hands them the route as installed."""
    result = {"cniVersion": "1.0.0", "ips": [{"address": "10.10.16.2/20", "gateway": "10.10.16.1"},
                                             {"address": "2001:db8::2/64"}],
              "routes": [{"dst": "10.0.0.0/8"}, {"dst": "0.0.0.0/0", "gw": "10.10.16.9"}, {"dst": "::/0"}]}
    assert cni.routes_with_gateways(result)["routes"] == [
        {"dst": "10.0.0.0/8", "gw": "10.10.16.1"}, {"dst": "0.0.0.0/0", "gw": "10.10.16.9"}, {"dst": "::/0"}]
    assert result["routes"][0] == {"dst": "10.0.0.0/8"}          # the runtime's copy is not changed


# -- the protocol: a real plugin process, stdin/stdout/exit status ------------------------------
def plugin_exe() -> str:
    exe = shutil.which("fastflannel-cni", path=os.path.dirname(sys.executable))
    assert exe, "the fastflannel-cni console script is missing: (re)install the package (pip install -e .)"
    return exe


def call(env: dict, conf=None):
    stdin = json.dumps(conf) if isinstance(conf, dict) else (conf or "")
    p = subprocess.run([plugin_exe()], input=stdin, capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ.get("PATH", ""), **env})
    return p.returncode, p.stdout, p.stderr


ENV = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/nonexistent"}


def test_version():
    rc, out, _ = call({"CNI_COMMAND": "VERSION"})
    assert rc == 0 and out == ('{"cniVersion":"1.1.0","supportedVersions":'
                               '["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n')


def test_without_a_command_it_says_what_it_is():
    rc, out, err = call({})
    assert rc == 0 and out == "" and "CNI protocol versions supported: 0.1.0, " in err


@pytest.mark.parametrize("env, conf, code, msg", [
    ({"CNI_COMMAND": "ADD"}, {"name": "n"}, 4,
     "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad id"}, {"name": "n"}, 4,
     "invalid characters in containerID"),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0:1"}, {"name": "n"}, 4,
     "interface name contains / or : or whitespace characters"),
    ({**ENV, "CNI_COMMAND": "ADD"}, "{not json", 6, "error unmarshall network config"),
    ({**ENV, "CNI_COMMAND": "ADD"}, {"cniVersion": "1.0.0"}, 7, "missing network name"),
    ({**ENV, "CNI_COMMAND": "ADD"}, {"name": "n", "cniVersion": "9.9.9"}, 1, "incompatible CNI versions"),
    ({**ENV, "CNI_COMMAND": "CHECK"}, {"name": "n", "cniVersion": "0.3.1"}, 1,
     "config version does not allow CHECK"),
    ({**ENV, "CNI_COMMAND": "GC"}, {"name": "n", "cniVersion": "1.0.0"}, 1, "config version does not allow GC"),
    ({**ENV, "CNI_COMMAND": "FROB"}, {"name": "n"}, 4, "unknown CNI_COMMAND: FROB"),
])
def test_errors_are_cni_error_results(env, conf, code, msg):
    rc, out, _ = call(env, conf)
    assert rc == 1
    err = json.loads(out)
    assert err["code"] == code and (err["msg"] == msg or err["msg"].startswith(msg + ": ")), err


def test_add_without_subnet_env_points_at_the_daemon(tmp_path):
    ns = tmp_path / "ns"
    ns.write_text("")
    rc, out, _ = call({**ENV, "CNI_COMMAND": "ADD", "CNI_NETNS": str(ns)},
                      {"name": "n", "cniVersion": "1.0.0", "subnetFile": str(tmp_path / "none.env"),
                       "dataDir": str(tmp_path / "data")})
    assert rc == 1
    err = json.loads(out)
    assert err["code"] == 999 and "failed to load flannel 'subnet.env' file" in err["msg"]
    assert not os.path.exists(tmp_path / "data")          # nothing saved for a DEL to find


def test_del_of_an_unknown_container_succeeds(tmp_path):
    rc, out, _ = call({**ENV, "CNI_COMMAND": "DEL"}, {"name": "n", "cniVersion": "1.0.0",
                                                      "dataDir": str(tmp_path)})
    assert (rc, out) == (0, "")


def test_gc_and_status_are_accepted_from_1_1_0(tmp_path):
    for command in ("GC", "STATUS"):
        rc, out, _ = call({"CNI_COMMAND": command, "CNI_PATH": "/nonexistent"}, {"name": "n", "cniVersion": "1.1.0"})
        assert (rc, out) == (0, ""), command


def test_startup_imports_nothing_heavy():
    """It runs once per pod and command: no pyroute2, numpy, etcd/grpc or fast path."""
    code = "import sys, fastflannel.agent.cni; print(' '.join(sorted(sys.modules)))"
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heavy = [m for m in mods if m.split(".")[0] in ("pyroute2", "numpy", "etcd3", "grpc", "google")
             or m.startswith(("fastflannel.fastpath", "fastflannel.agent.netlink", "fastflannel.agent.registry"))]
    assert heavy == []
    assert [m for m in mods if m.startswith("fastflannel.")] == ["fastflannel.agent", "fastflannel.agent.cni"]


# -- with Debian's plugins, in namespaces ------------------------------------------------------
@pytest.fixture
def cni_bin(tmp_path, netns_required):
    missing = [p for p in cniruntime.NEEDED_PLUGINS if not os.path.exists(os.path.join(cniruntime.PLUGIN_DIR, p))]
    if missing:
        pytest.skip(f"needs Debian's containernetworking-plugins in {cniruntime.PLUGIN_DIR} (missing {missing}; "
                    "scripts/install-deps.sh installs them)")
    return cniruntime.make_bin_dir(str(tmp_path / "cni-bin"), plugin_exe())


def _ns_json(lab, ns: str, cmd: str):
    return json.loads(lab.sh(ns, cmd).stdout)


def _pod_state(lab, ns: str):
    link = _ns_json(lab, ns, "ip -j addr show dev eth0")[0]
    addrs = [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]
    routes = {(r["dst"], r.get("gateway")) for r in _ns_json(lab, ns, "ip -j -4 route show")}
    lo = _ns_json(lab, ns, "ip -j link show dev lo")[0]
    return link["mtu"], addrs, routes, "UP" in lo["flags"]


def _conflist(tmp_path, host: str, subnet_file: str):
    base = tmp_path / host
    return cniruntime.load_conflist(CONFLIST, subnet_file, str(base / "flannel"), str(base / "ipam"))


@pytest.mark.netns
def test_add_check_del_with_the_real_plugins(lab, tmp_path, cni_bin):
    host = lab.add_host("h1")
    subnet_file = _write(tmp_path, SUBNET_ENV.format(masq="false"))
    conflist = _conflist(tmp_path, "h1", subnet_file)
    pod = lab.add_ns("h1p1")
    netns, cid = f"/var/run/netns/{pod}", "pod-0001"
    rt = cniruntime.Runtime(host.ns, cni_bin)
    rt.loopback(cid, netns)
    result = rt.add(conflist, cid, netns)

    # ADD: an address in the host's subnet, the gateway on the host's bridge, MTU and routes
    assert result["cniVersion"] == "1.0.0"
    ip = ipaddress.ip_interface(result["ips"][0]["address"])
    assert ip.network == ipaddress.ip_network("10.10.16.0/20") and result["ips"][0]["gateway"] == "10.10.16.1"
    mtu, addrs, routes, lo_up = _pod_state(lab, pod)
    assert (mtu, addrs, lo_up) == (1450, [str(ip)], True)
    assert {("10.0.0.0/8", "10.10.16.1"), ("default", "10.10.16.1")} <= routes
    bridge = _ns_json(lab, host.ns, "ip -j addr show dev cni0")[0]
    assert bridge["mtu"] == 1450
    assert "10.10.16.1/20" in [f"{a['local']}/{a['prefixlen']}" for a in bridge["addr_info"]]
    assert len(_ns_json(lab, host.ns, "ip -j link show master cni0")) == 1
    assert str(ip.ip) in lab.sh(host.ns, "iptables -t nat -S POSTROUTING").stdout   # ipMasq: not flannel's
    saved = os.path.join(conflist["plugins"][0]["dataDir"], cid)
    assert os.stat(saved).st_mode & 0o777 == 0o600
    with open(saved) as f:
        delegate = json.load(f)
    assert (delegate["type"], delegate["ipMasq"], delegate["mtu"], delegate["isGateway"]) == \
        ("bridge", True, 1450, True)
    assert delegate["ipam"]["ranges"] == [[{"subnet": "10.10.16.0/20"}]]
    lab.sh(pod, "ping -c1 -W2 10.10.16.1")                  # the pod reaches its gateway

    # CHECK: passes as set up; fails when the host's subnet changed or the pod lost a route
    rt.check(conflist, cid, netns, result)
    _write(tmp_path, SUBNET_ENV.format(masq="false").replace("10.10.16.1/20", "10.10.32.1/20"))
    with pytest.raises(cniruntime.PluginError, match="subnet changed since ADD"):
        rt.check(conflist, cid, netns, result)
    _write(tmp_path, SUBNET_ENV.format(masq="false"))
    lab.sh(pod, "ip route del 10.0.0.0/8")
    with pytest.raises(cniruntime.PluginError) as failed:
        rt.check(conflist, cid, netns, result)
    assert "Expected Route" in failed.value.result["msg"]     # the bridge plugin's own finding
    lab.sh(pod, "ip route add 10.0.0.0/8 via 10.10.16.1")
    rt.check(conflist, cid, netns, result)

    # DEL: the veth, the address reservation, the masquerade rule and the saved config are gone
    rt.delete(conflist, cid, netns, result)
    assert lab.sh(pod, "ip link show eth0", check=False).returncode != 0
    assert _ns_json(lab, host.ns, "ip -j link show master cni0") == []
    assert not os.path.exists(os.path.join(conflist["plugins"][0]["ipam"]["dataDir"], "cbr0", str(ip.ip)))
    assert str(ip.ip) not in lab.sh(host.ns, "iptables -t nat -S POSTROUTING").stdout
    assert not os.path.exists(saved)
    rt.delete(conflist, cid, netns, result)                 # DEL again: still fine
    rt.loopback(cid, netns, "DEL")


@pytest.mark.netns
@pytest.mark.etcd
def test_pods_on_two_hosts_talk_over_the_overlay(lab, tmp_path, cni_bin):
    """Daemons on two namespace hosts (udp backend, -ip-masq as in Kubernetes set-ups); one pod
    per host through the CNI plugin; TCP between the pods crosses the overlay."""
    cluster = Cluster(lab, seed_config("udp"), hosts=("h1", "h2"), extra_flags=["-ip-masq"])
    cluster.start_all()
    envs = cluster.wait_all()
    pods = {}
    for name, host in cluster.hosts.items():
        conflist = _conflist(tmp_path, name, cluster.subnet_file(name))
        pod = lab.add_ns(f"{name}p1")
        netns = f"/var/run/netns/{pod}"
        rt = cniruntime.Runtime(host.ns, cni_bin)
        rt.loopback("pod-" + name, netns)
        result = rt.add(conflist, "pod-" + name, netns)
        ip = ipaddress.ip_interface(result["ips"][0]["address"])
        assert ip.ip in ipaddress.ip_interface(envs[name]["FLANNEL_SUBNET"]).network
        mtu, _, routes, _ = _pod_state(lab, pod)
        assert mtu == int(envs[name]["FLANNEL_MTU"])
        assert ("10.0.0.0/8", str(ipaddress.ip_interface(envs[name]["FLANNEL_SUBNET"]).ip)) in routes
        assert str(ip.ip) not in lab.sh(host.ns, "iptables -t nat -S POSTROUTING").stdout   # flannel masquerades
        pods[name] = (pod, str(ip.ip), rt, conflist, result)
    (p1, ip1, *_), (p2, ip2, *_) = pods["h1"], pods["h2"]
    assert wait_for(lambda: lab.sh(p1, f"ping -c1 -W1 {ip2}", check=False).returncode == 0, 15)
    for src, dst, dst_ip in ((p1, p2, ip2), (p2, p1, ip1)):
        res = tcp_transfer(lab, src, dst, dst_ip, 4 << 20)
        assert res["ok"], res
    for name, (pod, _ip, rt, conflist, result) in pods.items():
        rt.delete(conflist, "pod-" + name, f"/var/run/netns/{pod}", result)
        assert _ns_json(lab, cluster.hosts[name].ns, "ip -j link show master cni0") == []


def test_cni_reads_the_dual_stack_subnet_env_the_daemon_writes(tmp_path):
    """The daemon's writer (agent/subnetfile.py) and the plugin agree on the two IPv6 lines."""
    from fastflannel.agent.subnetfile import write_subnet_file
    path = str(tmp_path / "subnet.env")
    write_subnet_file(path, ipaddress.IPv4Network("10.5.0.0/16"), ipaddress.IPv4Network("10.5.72.0/24"), 1450,
                      True, (ipaddress.IPv6Network("fc00:5::/48"), ipaddress.IPv6Network("fc00:5:0:48::/64")))
    ipam = cni.delegate_config({"name": "n"}, cni.load_subnet_env(path))["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.5.72.0/24"}], [{"subnet": "fc00:5:0:48::/64"}]]
    assert ipam["routes"] == [{"dst": "10.5.0.0/16"}, {"dst": "fc00:5::/48"}]
