"""`fastflannel-cni`: flannel's CNI plugin (github.com/flannel-io/cni-plugin), installed as `flannel`.

A meta-plugin: it reads the host's subnet.env, turns it into a config for a delegate plugin
(`bridge` with host-local IPAM by default), runs the delegate and prints its result. What it
builds, as flannel's `doCmdAdd`/`getDelegateIPAM` do:

- delegate = the config's "delegate" object (it must not set "name" or "ipam"), plus
  "name" (the network's), "type" "bridge" unless given, "ipMasq" = not FLANNEL_IPMASQ (if flannel
  masquerades, the bridge must not), "mtu" = FLANNEL_MTU, "isGateway" true for a bridge,
  "cniVersion" (the config's), "runtimeConfig" (passed through);
- "ipam" = the config's "ipam" plus "type" "host-local" unless given, "ranges" [[{"subnet":
  FLANNEL_SUBNET's network}]] (and the IPv6 subnet), "routes" = the config's routes plus one
  {"dst": network} per FLANNEL_NETWORK entry.

ADD saves the delegate config (Go's sorted-key JSON) as <dataDir>/<container id> before running
the delegate, so DEL runs the delegate with exactly what ADD used, even after subnet.env changed;
DEL of an unknown container succeeds (CNI spec: DEL is idempotent). CHECK (flannel's is an empty
stub) runs the delegate's CHECK with the saved config and the runtime's prevResult, and fails if
the host's subnet changed since ADD (the pod would sit in the old subnet). VERSION, GC and
STATUS answer as the CNI library's skel does for flannel. Environment checks and error codes
follow that skel (CNI spec §"Error codes").

Start-up must stay light (it runs once per pod and command): standard library only, nothing from
the daemon (no pyroute2, numpy or etcd).
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys

from . import __version__

TYPE_CHECKING = False                   # typing costs ~2 ms of start-up; mypy reads this as True
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Union

    Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"

# CNI spec error codes
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODING = 6
ERR_INVALID_CONFIG = 7
ERR_INVALID_NETNS = 8
ERR_INTERNAL = 999

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")   # container ids, network names
_IFNAME_MAX = 15
_REQUIRED = {   # variable -> commands that need it (skel's getCmdArgsFromEnv)
    "CNI_CONTAINERID": ("ADD", "CHECK", "DEL"),
    "CNI_NETNS": ("ADD", "CHECK"),
    "CNI_IFNAME": ("ADD", "CHECK", "DEL"),
    "CNI_PATH": ("ADD", "CHECK", "DEL", "GC", "STATUS"),
}


class CNIError(Exception):
    """An error result: printed as the spec's error JSON on stdout, exit status 1."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, cni_version: str) -> str:
        body: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            body["details"] = self.details
        return json.dumps(body, indent=4, ensure_ascii=False)


class DelegateFailed(CNIError):
    """The delegate's own error result, passed on unchanged (flannel returns the delegate's
    types.Error as it is)."""

    def __init__(self, raw: str, code: int, msg: str):
        super().__init__(code, msg)
        self.raw = raw


# -- subnet.env (flannel's loadFlannelSubnetEnv: its own reader, not a shell) ------------------


def _networks(text: str) -> list[Net]:
    nets: list[Net] = []
    for part in text.split(","):
        net = _parse_cidr(part)
        if net not in nets:
            nets.append(net)
    return nets


def _parse_cidr(text: str) -> Net:
    """Go's net.ParseCIDR: an address with a prefix; the network it lies in."""
    if "/" not in text:
        raise ValueError(f"invalid CIDR address: {text}")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR address: {text}") from None


def load_subnet_env(path: str) -> dict[str, Any]:
    """networks, subnet, ip6_networks, ip6_subnet, mtu, ipmasq; ValueError/OSError when unusable."""
    se: dict[str, Any] = {"networks": [], "subnet": None, "ip6_networks": [], "ip6_subnet": None,
                          "mtu": None, "ipmasq": None}
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    for line in lines:
        key, _, value = line.partition("=")
        if key == "FLANNEL_NETWORK":
            se["networks"] = _networks(value)
        elif key == "FLANNEL_SUBNET":
            se["subnet"] = _parse_cidr(value)
        elif key == "FLANNEL_IPV6_NETWORK":
            se["ip6_networks"] = _networks(value)
        elif key == "FLANNEL_IPV6_SUBNET":
            se["ip6_subnet"] = _parse_cidr(value)
        elif key == "FLANNEL_MTU":
            if not value.isdigit() or int(value) >= 1 << 32:
                raise ValueError(f'strconv.ParseUint: parsing "{value}": invalid syntax')
            se["mtu"] = int(value)
        elif key == "FLANNEL_IPMASQ":
            se["ipmasq"] = value == "true"
    missing = []
    if not se["networks"] and not se["ip6_networks"]:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if se["subnet"] is None and se["ip6_subnet"] is None:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if se["mtu"] is None:
        missing.append("FLANNEL_MTU")
    if se["ipmasq"] is None:
        missing.append("FLANNEL_IPMASQ")
    if missing:
        raise ValueError(f"{path} is missing {', '.join(missing)}")
    return se


# -- the delegate config -----------------------------------------------------------------------
def _delegate_ipam(conf: dict[str, Any], se: dict[str, Any]) -> dict[str, Any]:
    ipam = dict(conf.get("ipam") or {})
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [[{"subnet": str(sn)}] for sn in (se["subnet"], se["ip6_subnet"]) if sn is not None]
    routes = ipam.get("routes", [])
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise CNIError(ERR_INTERNAL, "failed to assemble Delegate IPAM: failed to read IPAM routes: "
                       "failed to parse ipam.routes: not a list of route objects")
    ipam["routes"] = list(routes) + [{"dst": str(nw)} for nw in se["networks"] + se["ip6_networks"]]
    return ipam


def delegate_config(conf: dict[str, Any], se: dict[str, Any]) -> dict[str, Any]:
    """flannel's cmdAdd + doCmdAdd: the config handed to the delegate plugin."""
    raw = conf.get("delegate")
    if raw is not None and not isinstance(raw, dict):
        raise CNIError(ERR_INTERNAL, "failed to load flannel netconf file: 'delegate' must be an object")
    d = dict(raw or {})
    if "type" in d and not isinstance(d["type"], str):
        raise CNIError(ERR_INTERNAL, "'delegate' dictionary, if present, must have (string) 'type' field")
    if "name" in d:
        raise CNIError(ERR_INTERNAL, "'delegate' dictionary must not have 'name' field, it'll be set by flannel")
    if "ipam" in d:
        raise CNIError(ERR_INTERNAL, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
    if conf.get("runtimeConfig") is not None:
        d["runtimeConfig"] = conf["runtimeConfig"]
    d["name"] = conf.get("name", "")
    d.setdefault("type", "bridge")
    d.setdefault("ipMasq", not se["ipmasq"])      # if flannel is not masquerading, the bridge should
    d.setdefault("mtu", se["mtu"])
    if d["type"] == "bridge":
        d.setdefault("isGateway", True)
    if conf.get("cniVersion"):
        d["cniVersion"] = conf["cniVersion"]
    d["ipam"] = _delegate_ipam(conf, se)
    return d


def go_json(obj: Any) -> bytes:
    """Go's json.Marshal of a map: sorted keys, no spaces (the bytes flannel stores)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- running the delegate (libcni invoke: found in CNI_PATH, same environment) ----------------
def find_plugin(name: str, cni_path: str) -> str:
    if "/" in name or not name:
        raise CNIError(ERR_INTERNAL, f"invalid plugin name: {name}")
    dirs = [d for d in cni_path.split(":") if d]
    for d in dirs:
        full = os.path.join(d, name)
        if os.path.isfile(full):
            return full
    raise CNIError(ERR_INTERNAL, f"failed to find plugin {name!r} in path {dirs}")


def run_delegate(command: str, conf_bytes: bytes, environ: Mapping[str, str]) -> bytes:
    """Run the delegate named by the config's "type" with CNI_COMMAND=command; its stdout, or
    DelegateFailed carrying its error result."""
    dtype = json.loads(conf_bytes).get("type", "")
    path = find_plugin(dtype if isinstance(dtype, str) else "", environ.get("CNI_PATH", ""))
    env = dict(environ, CNI_COMMAND=command)
    try:
        p = subprocess.run([path], input=conf_bytes, stdout=subprocess.PIPE, env=env)
    except OSError as e:
        raise CNIError(ERR_INTERNAL, f"failed to run {path}: {e}") from None
    if p.returncode == 0:
        return p.stdout
    text = p.stdout.decode(errors="replace")
    try:
        err = json.loads(text)
    except ValueError:
        err = None
    if isinstance(err, dict) and isinstance(err.get("code"), int):
        raise DelegateFailed(text, err["code"], str(err.get("msg", "")))
    msg = (f"netplugin failed but error parsing its diagnostic message {text!r}" if text
           else f"netplugin failed with no error message: exit status {p.returncode}")
    raise CNIError(ERR_INTERNAL, msg)


# -- the commands --------------------------------------------------------------------------------
def _scratch_path(conf: dict[str, Any], container_id: str) -> str:
    return os.path.join(conf.get("dataDir") or DEFAULT_DATA_DIR, container_id)


def _save_scratch(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _subnet_env(conf: dict[str, Any]) -> dict[str, Any]:
    path = conf.get("subnetFile") or DEFAULT_SUBNET_FILE
    try:
        return load_subnet_env(path)
    except (OSError, ValueError) as e:
        raise CNIError(ERR_INTERNAL, f"failed to load flannel 'subnet.env' file: {e}. "
                       "Check the fastflannel daemon log for this node.") from None


def cmd_add(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    _check_netns(environ.get("CNI_NETNS", ""))
    delegate = delegate_config(conf, _subnet_env(conf))
    data = go_json(delegate)
    sys.stderr.write("delegateAdd: netconf sent to delegate plugin:\n" + data.decode() + "\n")
    try:
        _save_scratch(_scratch_path(conf, environ["CNI_CONTAINERID"]), data)
    except OSError as e:
        raise CNIError(ERR_IO, f"failed to save the delegate config: {e}") from None
    return run_delegate("ADD", data, environ)


def cmd_del(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    path = _scratch_path(conf, environ["CNI_CONTAINERID"])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return b""                      # never added, or already deleted: nothing to do
    except OSError as e:
        raise CNIError(ERR_IO, f"failed to read {path}: {e}") from None
    try:
        json.loads(data)["type"]
    except (ValueError, KeyError, TypeError) as e:
        # flannel: the interface stays on the bridge until reboot; DEL must not fail for it.
        sys.stderr.write(f"failed to parse netconf: {e}\n")
        return b""
    run_delegate("DEL", data, environ)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return b""


def cmd_check(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    path = _scratch_path(conf, environ["CNI_CONTAINERID"])
    try:
        with open(path, "rb") as f:
            saved = json.loads(f.read())
    except FileNotFoundError:
        raise CNIError(ERR_UNKNOWN_CONTAINER, f"no delegate config for container "
                       f"{environ['CNI_CONTAINERID']} in {os.path.dirname(path)}") from None
    except (OSError, ValueError) as e:
        raise CNIError(ERR_IO, f"failed to read {path}: {e}") from None
    now = [r[0]["subnet"] for r in _delegate_ipam({}, _subnet_env(conf))["ranges"]]
    was = [r[0].get("subnet") for r in saved.get("ipam", {}).get("ranges", []) if r]
    if was != now:
        raise CNIError(ERR_INTERNAL, f"the host's flannel subnet changed since ADD: container set up "
                       f"in {', '.join(map(str, was))}, subnet.env now has {', '.join(now)}")
    if isinstance(conf.get("prevResult"), dict):
        saved["prevResult"] = routes_with_gateways(conf["prevResult"])
    if conf.get("cniVersion"):
        saved["cniVersion"] = conf["cniVersion"]
    run_delegate("CHECK", go_json(saved), environ)
    return b""


def routes_with_gateways(result: dict[str, Any]) -> dict[str, Any]:
    """The result with each gateway-less route given its family's gateway: the route the IPAM
    step really installed (a route without "gw" goes via the default gateway). The bridge
    plugin's CHECK before containernetworking/plugins v1.3.0 (Debian 12 ships v1.1.1) looks for
    a route with no gateway and fails on flannel's {"dst": FLANNEL_NETWORK} (plugins #886)."""
    gateways: dict[int, str] = {}
    for ip in result.get("ips") or []:
        try:
            version = ipaddress.ip_interface(ip["address"]).version
        except (KeyError, TypeError, ValueError):
            continue
        if ip.get("gateway"):
            gateways.setdefault(version, ip["gateway"])
    routes = []
    for route in result.get("routes") or []:
        route = dict(route)
        try:
            family: int = ipaddress.ip_network(route["dst"], strict=False).version
        except (KeyError, TypeError, ValueError):
            family = 0                   # not an address family: left as it is
        if not route.get("gw") and family in gateways:
            route["gw"] = gateways[family]
        routes.append(route)
    return dict(result, routes=routes) if "routes" in result else dict(result)


def _check_netns(netns: str) -> None:
    """skel: the container's netns must not be the plugin's own."""
    try:
        theirs = os.stat(netns)
        ours = os.stat("/proc/self/ns/net")
    except OSError as e:
        raise CNIError(ERR_INVALID_NETNS, f"failed to Statfs {netns!r}: {e.strerror}") from None
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        raise CNIError(ERR_INVALID_NETNS, "plugin's netns and netns from CNI_NETNS should not be the same")


# -- the skel: environment, versions, dispatch ---------------------------------------------------
def _version_tuple(v: str) -> tuple[int, int, int]:
    parts = v.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CNIError(ERR_DECODING, f"invalid version {v!r}: the version is empty or has an invalid format")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _validate_env(environ: Mapping[str, str]) -> str:
    cmd = environ.get("CNI_COMMAND", "")
    missing = [] if cmd else ["CNI_COMMAND"]
    missing += [v for v, cmds in _REQUIRED.items() if cmd in cmds and not environ.get(v)]
    if missing:
        raise CNIError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    cid = environ.get("CNI_CONTAINERID", "")
    if cid and cmd in _REQUIRED["CNI_CONTAINERID"] and not _NAME_RE.match(cid):
        raise CNIError(ERR_INVALID_ENV, "invalid characters in containerID", cid)
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and cmd in _REQUIRED["CNI_IFNAME"]:
        _validate_ifname(ifname)
    return cmd


def _validate_ifname(name: str) -> None:
    if len(name) > _IFNAME_MAX:
        raise CNIError(ERR_INVALID_ENV, "interface name is too long",
                       f"interface name should be less than {_IFNAME_MAX + 1} characters")
    if name in (".", ".."):
        raise CNIError(ERR_INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in name):
        raise CNIError(ERR_INVALID_ENV, "interface name contains / or : or whitespace characters")


def _load_conf(data: bytes) -> dict[str, Any]:
    try:
        conf = json.loads(data)
    except ValueError as e:
        raise CNIError(ERR_DECODING, f"error unmarshall network config: {e}") from None
    if not isinstance(conf, dict):
        raise CNIError(ERR_DECODING, "error unmarshall network config: not a JSON object")
    name = conf.get("name")
    if not name:
        raise CNIError(ERR_INVALID_CONFIG, "missing network name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CNIError(ERR_INVALID_CONFIG, "invalid characters found in network name", str(name))
    version = conf.get("cniVersion") or "0.1.0"
    if not isinstance(version, str):
        raise CNIError(ERR_DECODING, "decoding version from network config: cniVersion must be a string")
    if version not in SUPPORTED_VERSIONS:
        quoted = " ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
        raise CNIError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{version}", plugin supports [{quoted}]')
    return conf


def _needs_version(conf: dict[str, Any], command: str, minimum: str) -> None:
    if _version_tuple(conf.get("cniVersion") or "0.1.0") < _version_tuple(minimum):
        raise CNIError(ERR_INCOMPATIBLE_VERSION, f"config version does not allow {command}")


def dispatch(environ: Mapping[str, str], stdin: bytes) -> bytes:
    """One plugin call: the bytes for stdout, or CNIError/DelegateFailed."""
    cmd = _validate_env(environ)
    if cmd == "VERSION":
        return (json.dumps({"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)},
                           separators=(",", ":")) + "\n").encode()
    conf = _load_conf(stdin)
    if cmd == "ADD":
        return cmd_add(conf, environ)
    if cmd == "DEL":
        return cmd_del(conf, environ)
    if cmd == "CHECK":
        _needs_version(conf, "CHECK", "0.4.0")
        return cmd_check(conf, environ)
    if cmd in ("GC", "STATUS"):       # flannel has neither: accepted, nothing to do
        _needs_version(conf, cmd, "1.1.0")
        return b""
    raise CNIError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {cmd}")


def _config_version(stdin: bytes) -> str:
    try:
        v = json.loads(stdin).get("cniVersion")
        return v if isinstance(v, str) and v else CURRENT_VERSION
    except (ValueError, AttributeError):
        return CURRENT_VERSION


def main() -> int:
    environ = os.environ
    if not environ.get("CNI_COMMAND"):
        sys.stderr.write(f"CNI Plugin fastflannel-cni (flannel) version {__version__}\n"
                         f"CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
        return 0
    stdin = b"" if environ.get("CNI_COMMAND") == "VERSION" else sys.stdin.buffer.read()
    try:
        out = dispatch(environ, stdin)
    except DelegateFailed as e:
        sys.stdout.write(e.raw)
        return 1
    except CNIError as e:
        sys.stdout.write(e.to_json(_config_version(stdin)))
        return 1
    sys.stdout.buffer.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
