"""flanneld's command line: Go `flag` syntax, flanneld's flags and defaults, FLANNELD_* variables.

Syntax (Go's flag package, docs/flannel-compat.md §"Flags and FLANNELD_* environment"): `-x=v`,
`--x=v`, `-x v`, `--x v`; a boolean flag alone means true and takes its value only as
`-x=false`; parsing stops at the first non-flag argument or after `--`. Then, for every flag not
given on the command line, the variable `FLANNELD_<NAME>` (upper case, `-` and `.` as `_`) is
applied; empty values are ignored and a repeatable flag gets exactly one value (no comma split),
as coreos/pkg/flagutil does.

Deliberate differences from flanneld: flags flanneld accepts but fastflannel cannot honour fail
with a clear message (`-kube-subnet-mgr`), and a few values flanneld would take and then crash
or misbehave on are refused up front (`-iptables-resync` < 1, `-healthz-port` out of range,
an empty `-etcd-endpoints` list).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from .errors import FlagError, HelpRequested

ENV_PREFIX = "FLANNELD"
MAX_BATCH = 1024                    # UIO_MAXIOV: the most messages one sendmmsg/recvmmsg takes
MAX_WORKERS = 64                    # TUN queues per fast path (fastpath MAX_WORKERS)
# -fastpath-disable: offload parts that can be switched off one by one (a kernel bug in one of
# them, docs/fastpath.md); fastpath.Forwarder.open takes them as keywords with "_" for "-".
OFFLOAD_PARTS = ("tun-tso", "udp-gso", "udp-gro", "tcp-gro")
ETCD_APIS = ("auto", "v2", "v3")    # -etcd-api (agent/store_select.py API_CHOICES)


@dataclass
class Options:
    etcd_endpoints: List[str] = field(default_factory=lambda: ["http://127.0.0.1:4001", "http://127.0.0.1:2379"])
    etcd_prefix: str = "/coreos.com/network"
    etcd_keyfile: str = ""
    etcd_certfile: str = ""
    etcd_cafile: str = ""
    etcd_username: str = ""
    etcd_password: str = ""
    etcd_api: str = "auto"                          # fastflannel: auto | v2 | v3 (agent/store_select.py)
    iface: List[str] = field(default_factory=list)
    iface_regex: List[str] = field(default_factory=list)
    iface_can_reach: str = ""
    public_ip: str = ""
    public_ipv6: str = ""
    subnet_file: str = "/run/flannel/subnet.env"
    subnet_lease_renew_margin: int = 60             # minutes
    ip_masq: bool = False
    ip_masq_fully_random_disable: bool = False
    iptables_resync: int = 5                        # seconds
    iptables_forward_rules: bool = True
    ip_blackhole_route: bool = False
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0                           # 0 = no health server
    kube_subnet_mgr: bool = False
    kube_api_url: str = ""
    kubeconfig_file: str = ""
    kube_annotation_prefix: str = "flannel.alpha.coreos.com"
    net_config_path: str = "/etc/kube-flannel/net-conf.json"
    set_node_network_unavailable: bool = True
    version: bool = False
    v: int = 0                                      # klog verbosity
    vmodule: str = ""
    log_backtrace_at: str = ""
    # fastflannel's own
    fastpath_workers: int = 1
    fastpath_batch: int = 64                        # packets per recvmmsg/sendmmsg
    fastpath_duplex: bool = False                   # one worker thread per queue, both directions
    # On by default: every part falls back by itself when the kernel refuses it (docs/fastpath.md).
    fastpath_offload: bool = True
    fastpath_disable: List[str] = field(default_factory=list)   # of OFFLOAD_PARTS
    udp_anti_spoof: bool = True
    # bookkeeping: flag names set on the command line / from the environment, positional args
    set_on_command_line: Tuple[str, ...] = ()
    set_from_env: Tuple[str, ...] = ()
    args: List[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Flag:
    name: str
    kind: str                   # "str", "int", "bool", "list", "csv"
    help: str
    repeatable: bool = False

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + "_" + self.name.upper().replace("-", "_").replace(".", "_")


_FLAGS: Tuple[_Flag, ...] = (
    _Flag("etcd-endpoints", "csv", "a comma-delimited list of etcd endpoints"),
    _Flag("etcd-prefix", "str", "etcd prefix"),
    _Flag("etcd-keyfile", "str", "SSL key file used to secure etcd communication"),
    _Flag("etcd-certfile", "str", "SSL certification file used to secure etcd communication"),
    _Flag("etcd-cafile", "str", "SSL Certificate Authority file used to secure etcd communication"),
    _Flag("etcd-username", "str", "username for BasicAuth to etcd"),
    _Flag("etcd-password", "str", "password for BasicAuth to etcd"),
    _Flag("etcd-api", "str", "fastflannel: the etcd store: v3 (flanneld v0.18+), v2 (flanneld v0.6-v0.13; "
          "etcd >= 3.4 needs --enable-v2) or auto (the store that holds the config; v3 when both do)"),
    _Flag("iface", "list", "interface to use (IP or name) for inter-host communication; repeatable",
          repeatable=True),
    _Flag("iface-regex", "list", "regex expression to match the first interface to use (IP or name) "
          "for inter-host communication; repeatable", repeatable=True),
    _Flag("iface-can-reach", "str", "detect the interface to use by the route to this IP"),
    _Flag("public-ip", "str", "IP accessible by other nodes for inter-host communication"),
    _Flag("public-ipv6", "str", "IPv6 accessible by other nodes for inter-host communication"),
    _Flag("subnet-file", "str", "filename where env variables (subnet, MTU, ...) will be written to"),
    _Flag("subnet-lease-renew-margin", "int", "subnet lease renewal margin, in minutes, ranging from 1 to 1439"),
    _Flag("ip-masq", "bool", "setup IP masquerade rule for traffic destined outside of overlay network"),
    _Flag("ip-masq-fully-random-disable", "bool", "do not use --random-fully on MASQUERADE rules"),
    _Flag("iptables-resync", "int", "resync period for iptables rules, in seconds"),
    _Flag("iptables-forward-rules", "bool", "add default accept rules to FORWARD chain in iptables"),
    _Flag("ip-blackhole-route", "bool", "add a blackhole route for this host's subnet"),
    _Flag("healthz-ip", "str", "the IP address for healthz server to listen"),
    _Flag("healthz-port", "int", "the port for healthz server to listen (0 to disable)"),
    _Flag("kube-subnet-mgr", "bool", "contact the Kubernetes API for subnet assignment (not supported)"),
    _Flag("kube-api-url", "str", "Kubernetes API server URL (kube mode only; not supported)"),
    _Flag("kubeconfig-file", "str", "kubeconfig file location (kube mode only; not supported)"),
    _Flag("kube-annotation-prefix", "str", "Kubernetes annotation prefix (kube mode only; not supported)"),
    _Flag("net-config-path", "str", "path to the network configuration file (kube mode only; not supported)"),
    _Flag("set-node-network-unavailable", "bool", "set NodeNetworkUnavailable (kube mode only; not supported)"),
    _Flag("version", "bool", "print version and exit"),
    _Flag("v", "int", "log level for V logs"),
    _Flag("vmodule", "str", "comma-separated list of pattern=N settings for file-filtered logging (accepted, ignored)"),
    _Flag("log_backtrace_at", "str", "when logging hits line file:N, emit a stack trace (accepted, ignored)"),
    _Flag("fastpath-workers", "int", "fastflannel: udp fast-path worker threads per direction"),
    _Flag("fastpath-batch", "int", f"fastflannel: packets per batched syscall (1..{MAX_BATCH})"),
    _Flag("fastpath-duplex", "bool", "fastflannel: one udp fast-path thread per queue for both "
          "directions (fewer wake-ups on few cores)"),
    _Flag("fastpath-offload", "bool", "fastflannel: TUN/UDP segmentation offloads (default true; "
          "-fastpath-offload=false for the plain batched tier)"),
    _Flag("fastpath-disable", "csv", "fastflannel: offload parts to keep off with -fastpath-offload, "
          "a comma list of " + ", ".join(OFFLOAD_PARTS)),
    _Flag("udp-anti-spoof", "bool", "fastflannel: drop udp datagrams not sent by a known peer"),
)
_BY_NAME: Dict[str, _Flag] = {f.name: f for f in _FLAGS}
_HELP_NAMES = ("h", "help")


def _go_bool(text: str) -> bool:
    """strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError("parse error")


# strconv.ParseInt(s, 0, 64) takes Go's integer literals: ASCII digits, an optional sign, a 0x/0o/0b
# prefix or a leading 0 for octal, underscores only between digits (or right after a prefix).
# Python's int() would also take Unicode digits and surrounding whitespace.
_GO_INT_RE = re.compile(r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+"
                        r"|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)")


def _go_int(text: str) -> int:
    """strconv.ParseInt(s, 0, 64), with Go's flag package's error words."""
    if not _GO_INT_RE.fullmatch(text):
        raise ValueError("parse error")
    sign = -1 if text[0] == "-" else 1
    s = text.lstrip("+-").replace("_", "")
    if s[:2].lower() in ("0x", "0o", "0b"):
        value = int(s, 0)
    elif len(s) > 1 and s[0] == "0":
        value = int(s, 8)
    else:
        value = int(s, 10)
    value *= sign
    if not -(1 << 63) <= value < (1 << 63):
        raise ValueError("value out of range")
    return value


def _q(text: str) -> str:
    """Go's %q for the common cases: double quotes, JSON-style escapes."""
    return json.dumps(text)


def _set(opts: Options, flag: _Flag, value: str, source: str, fresh: set) -> None:
    """Apply one value; `source` names the flag or variable for error messages."""
    if flag.kind == "bool":
        try:
            setattr(opts, flag.attr, _go_bool(value))
        except ValueError as e:
            raise FlagError(f"invalid boolean value {_q(value)} for {source.replace('flag ', '')}: {e}") from None
    elif flag.kind == "int":
        try:
            setattr(opts, flag.attr, _go_int(value))
        except ValueError as e:
            raise FlagError(f"invalid value {_q(value)} for {source}: {e}") from None
    elif flag.kind == "list":
        if flag.name not in fresh:        # the first value replaces the (empty) default
            setattr(opts, flag.attr, [])
            fresh.add(flag.name)
        getattr(opts, flag.attr).append(value)
    elif flag.kind == "csv":
        setattr(opts, flag.attr, [p.strip() for p in value.split(",") if p.strip()])
    else:
        setattr(opts, flag.attr, value)


def _parse_argv(argv: List[str], opts: Options) -> List[str]:
    """Go's FlagSet.Parse; returns the names given (in order, with repeats)."""
    seen: List[str] = []
    fresh: set = set()
    args = list(argv)
    while args:
        arg = args[0]
        if len(arg) < 2 or arg[0] != "-":
            break                                   # first non-flag argument ends the flags
        args.pop(0)
        body = arg[2:] if arg.startswith("--") else arg[1:]
        if arg == "--":
            break
        if not body or body[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, eq, value = body.partition("=")
        if name in _HELP_NAMES:
            raise HelpRequested(usage())
        flag = _BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"flag provided but not defined: -{name}")
        if not eq:
            if flag.kind == "bool":
                value = "true"
            elif args:
                value = args.pop(0)
            else:
                raise FlagError(f"flag needs an argument: -{name}")
        _set(opts, flag, value, f"flag -{name}", fresh)
        seen.append(name)
    opts.args = args
    return seen


def _apply_env(opts: Options, environ: Mapping[str, str], given: set) -> List[str]:
    used = []
    for flag in _FLAGS:
        if flag.name in given:
            continue
        value = environ.get(flag.env, "")
        if value == "":
            continue
        _set(opts, flag, value, flag.env, set())
        used.append(flag.name)
    return used


def _validate(opts: Options) -> None:
    # flanneld: "Invalid subnet-lease-renew-margin option, out of acceptable range" and exit 1.
    if not 1 <= opts.subnet_lease_renew_margin <= 24 * 60 - 1:
        raise FlagError(f"Invalid subnet-lease-renew-margin option, out of acceptable range: "
                        f"{opts.subnet_lease_renew_margin} (valid: 1..1439 minutes)")
    if opts.kube_subnet_mgr:
        raise FlagError("kube subnet manager is not supported by fastflannel "
                        "(use etcd: drop -kube-subnet-mgr)")
    if not opts.etcd_endpoints:
        raise FlagError("-etcd-endpoints: no etcd endpoint given")
    if opts.etcd_api not in ETCD_APIS:
        raise FlagError(f"-etcd-api must be one of {', '.join(ETCD_APIS)}, got {_q(opts.etcd_api)}")
    if opts.iptables_resync < 1:
        raise FlagError(f"-iptables-resync must be at least 1 second, got {opts.iptables_resync}")
    if not 0 <= opts.healthz_port <= 65535:
        raise FlagError(f"-healthz-port must be 0..65535, got {opts.healthz_port}")
    if not 1 <= opts.fastpath_workers <= MAX_WORKERS:
        raise FlagError(f"-fastpath-workers must be 1..{MAX_WORKERS}, got {opts.fastpath_workers}")
    bad = [p for p in opts.fastpath_disable if p not in OFFLOAD_PARTS]
    if bad:
        raise FlagError(f"-fastpath-disable: unknown offload part {bad[0]!r} "
                        f"(known: {', '.join(OFFLOAD_PARTS)})")
    if not 1 <= opts.fastpath_batch <= MAX_BATCH:
        raise FlagError(f"-fastpath-batch must be 1..{MAX_BATCH}, got {opts.fastpath_batch}")


def parse_flags(argv: List[str], environ: Optional[Mapping[str, str]] = None) -> Options:
    """flanneld's flags, then FLANNELD_* for the flags not given; raise FlagError or HelpRequested."""
    opts = Options()
    seen = _parse_argv(list(argv), opts)
    given = set(seen)
    used = _apply_env(opts, environ or {}, given)
    opts.set_on_command_line = tuple(dict.fromkeys(seen))
    opts.set_from_env = tuple(used)
    _validate(opts)
    return opts


def _default_text(flag: _Flag) -> str:
    value = getattr(Options(), flag.attr)
    if flag.kind == "csv":
        return ",".join(value)
    if flag.kind == "list" or value in ("", 0, False):
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def usage(prog: str = "fastflannel") -> str:
    """Go-style usage text: one flag per entry, its help indented below, defaults noted."""
    lines = [f"Usage: {prog} [OPTION]...", ""]
    for flag in sorted(_FLAGS, key=lambda f: f.name):
        kind = {"str": " string", "csv": " string", "list": " value", "int": " int", "bool": ""}[flag.kind]
        lines.append(f"  -{flag.name}{kind}")
        default = _default_text(flag)
        suffix = f" (default {_q(default)})" if flag.kind in ("str", "csv") and default else (
            f" (default {default})" if default else "")
        lines.append(f"    \t{flag.help}{suffix}")
    lines.append("")
    lines.append(f"Every flag not given can be set from the environment as {ENV_PREFIX}_<FLAG>, "
                 f"e.g. {ENV_PREFIX}_ETCD_ENDPOINTS, {ENV_PREFIX}_IP_MASQ=true.")
    return "\n".join(lines)
