"""`fastflannel docker-opts`: flannel's `dist/mk-docker-opts.sh`, byte for byte.

Distribution units run `mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker`
after flanneld is ready, and dockerd reads the result as an EnvironmentFile. The script's
behaviour (flannel v0.20.2, run by /bin/sh), kept here:

- flags (getopts "f:d:icmk:?h"): -f subnet.env (default /run/flannel/subnet.env), -d output file
  (default /run/docker_opts.env), -i one DOCKER_OPT_* line per option, -c one combined line,
  -k the combined line's variable (default DOCKER_OPTS), -m leave out --ip-masq; neither -i nor
  -c means both; -h, an unknown flag or a missing argument print the usage and exit 1.
- options: DOCKER_OPT_BIP="--bip=$FLANNEL_SUBNET", DOCKER_OPT_MTU="--mtu=$FLANNEL_MTU",
  DOCKER_OPT_IPMASQ="--ip-masq=false" when flannel masquerades (FLANNEL_IPMASQ=true) and
  "--ip-masq=true" when it does not; any other FLANNEL_IPMASQ is an error (exit 1, file untouched).
- the script sources subnet.env into its own environment, so variables already in the
  environment take part: every DOCKER_OPT_* variable is an option, and the combined variable's
  current value starts the combined line. Options come in the order `set` lists them (sorted by
  name): BIP, IPMASQ, MTU. The combined value is the start value plus a space (if it was not
  empty), then " <value>" per option: `DOCKER_OPTS=" --bip=10.1.16.1/20 --ip-masq=true --mtu=1472"`.
- after writing, it fails (exit 1) if the routing table already holds the host's subnet via a
  gateway ("Your routing table already contains the subnet: ...").

Differences, on purpose: a -k name that is not a shell variable name is refused (the script would
eval it); values are written as they are (the script's `echo` would expand backslash escapes and
its unquoted loop would split values holding spaces); a relative -f path is a path (dash's `.`
looks a name without a slash up in $PATH and fails).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from .subnetfile import read_subnet_env

DEFAULT_FLANNEL_ENV = "/run/flannel/subnet.env"
DEFAULT_DOCKER_ENV = "/run/docker_opts.env"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPTSTRING = "f:d:icmk:?h"


class UsageError(Exception):
    """A bad command line: the message (may be empty) goes before the usage text."""


class DockerOptsError(Exception):
    """A fatal condition the script reports on stderr with exit status 1."""


@dataclass
class Args:
    flannel_env: str = DEFAULT_FLANNEL_ENV
    docker_env: str = DEFAULT_DOCKER_ENV
    combined_key: str = "DOCKER_OPTS"
    indiv: bool = False
    combined: bool = False
    ipmasq: bool = True


def usage(prog: str = "fastflannel docker-opts") -> str:
    return (f"{prog} [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]\n\n"
            "Generate Docker daemon options based on flannel env file\n"
            "OPTIONS:\n"
            "\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env\n"
            "\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env\n"
            "\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500\n"
            "\t-c\tOutput combined Docker options into DOCKER_OPTS var\n"
            "\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)\n"
            "\t-m\tDo not output --ip-masq (useful for older Docker version)\n")


def _getopts(argv: list[str]) -> list[tuple[str, str]]:
    """POSIX getopts over "f:d:icmk:?h": grouped flags (-ic), attached (-fFILE) or separate
    arguments, `--` ends the flags, the first non-flag word ends them too."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            break
        if len(word) < 2 or word[0] != "-":
            break
        j = 1
        while j < len(word):
            ch = word[j]
            pos = _OPTSTRING.find(ch)
            if ch == ":" or pos < 0:
                raise UsageError(f"Illegal option -{ch}")
            if pos + 1 < len(_OPTSTRING) and _OPTSTRING[pos + 1] == ":":
                value = word[j + 1:]
                if not value:
                    i += 1
                    if i >= len(argv):
                        raise UsageError(f"No arg for -{ch} option")
                    value = argv[i]
                out.append((ch, value))
                break
            out.append((ch, ""))
            j += 1
        i += 1
    return out


def parse_args(argv: list[str]) -> Args:
    a = Args()
    for ch, value in _getopts(argv):
        if ch == "f":
            a.flannel_env = value
        elif ch == "d":
            a.docker_env = value
        elif ch == "i":
            a.indiv = True
        elif ch == "c":
            a.combined = True
        elif ch == "m":
            a.ipmasq = False
        elif ch == "k":
            a.combined_key = value
        else:                                   # -h or -?
            raise UsageError("")
    if not _NAME_RE.match(a.combined_key):
        raise UsageError(f"-k {a.combined_key!r}: not a variable name")
    if not a.indiv and not a.combined:
        a.indiv = a.combined = True
    return a


def shell_vars(args: Args, environ: Mapping[str, str]) -> dict[str, str]:
    """The script's variables after `. $flannel_env`: the environment, then the file on top."""
    env = dict(environ)
    if os.path.isfile(args.flannel_env):
        env.update(read_subnet_env(args.flannel_env))
    return env


def docker_options(args: Args, env: dict[str, str]) -> dict[str, str]:
    """DOCKER_OPT_* name -> value, as the script sets and then finds them."""
    opts = {k: v for k, v in env.items() if "DOCKER_OPT_" in k}
    if env.get("FLANNEL_SUBNET"):
        opts["DOCKER_OPT_BIP"] = f"--bip={env['FLANNEL_SUBNET']}"
    if env.get("FLANNEL_MTU"):
        opts["DOCKER_OPT_MTU"] = f"--mtu={env['FLANNEL_MTU']}"
    masq = env.get("FLANNEL_IPMASQ", "")
    if masq and args.ipmasq:
        if masq not in ("true", "false"):
            raise DockerOptsError(f"Invalid value of FLANNEL_IPMASQ: {masq}")
        # flannel masquerades itself, so Docker must not (and the other way round).
        opts["DOCKER_OPT_IPMASQ"] = "--ip-masq=false" if masq == "true" else "--ip-masq=true"
    return opts


def render(args: Args, env: dict[str, str]) -> str:
    opts = docker_options(args, env)
    combined = env.get(args.combined_key, "")
    if combined:
        combined += " "
    lines = []
    for name in sorted(opts):
        if args.indiv:
            lines.append(f'{name}="{opts[name]}"\n')
        combined += f" {opts[name]}"
    if args.combined:
        lines.append(f'{args.combined_key}="{combined}"\n')
    return "".join(lines)


def subnet_routed_via_gateway(flannel_subnet: str, route_table: str) -> str:
    """The script's last check: lines of `ip route show` that hold the host's subnet (network
    address = FLANNEL_SUBNET's fourth octet - 1) and "via". Matched as grep does (a regex)."""
    try:
        addr, plen = flannel_subnet.split("/", 1)
        a, b, c, d = addr.split(".")
        pattern = f"{a}.{b}.{c}.{int(d) - 1}/{plen}"
        rx = re.compile(pattern)
    except (ValueError, re.error):
        return ""                                # the script's arithmetic would not match either
    return "\n".join(line for line in route_table.splitlines() if rx.search(line) and "via" in line)


def _route_table() -> str:
    try:
        return subprocess.run(["ip", "route", "show"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""                                # no `ip`: the script's grep finds nothing either


def run(argv: list[str], environ: Mapping[str, str] | None = None) -> None:
    """Write the Docker env file; raise UsageError or DockerOptsError."""
    args = parse_args(argv)
    env = shell_vars(args, os.environ if environ is None else environ)
    text = render(args, env)
    with open(args.docker_env, "w", encoding="utf-8") as f:
        f.write(text)
    subnet = env.get("FLANNEL_SUBNET", "")
    if subnet:
        clash = subnet_routed_via_gateway(subnet, _route_table())
        if clash:
            raise DockerOptsError(f"Your routing table already contains the subnet: {clash}")


def main(argv: list[str] | None = None) -> int:
    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except UsageError as e:
        if str(e):
            print(f"fastflannel docker-opts: {e}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 1
    except (DockerOptsError, OSError) as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0
