"""subnet.env: written once at start-up for Docker/CNI, read back to reuse the previous subnet.

Format and write semantics follow flannel's WriteSubnetFile (docs/flannel-compat.md
§"subnet.env"): the lines FLANNEL_NETWORK, FLANNEL_SUBNET (the lease's first host address with
the lease prefix), dual-stack FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET (the same for the
IPv6 lease), FLANNEL_MTU, FLANNEL_IPMASQ (IPv6-only: without the two IPv4 lines), each ending
in "\\n"; written atomically (temp file in the same directory, fsync, rename) with mode 0644
whatever the umask, the directory created 0755.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import tempfile
from typing import Any, Callable, Dict, Optional, Tuple

from .lease import go_ip6_string

IPv4Network = ipaddress.IPv4Network
IPv6Network = ipaddress.IPv6Network

FILE_MODE = 0o644
DIR_MODE = 0o755

log = logging.getLogger("fastflannel.subnetfile")

_CIDR_RE = re.compile(r"^([0-9.]+)/([0-9]+)$")


def render_subnet_env(network: Optional[IPv4Network], subnet: Optional[IPv4Network], mtu: int, ip_masq: bool,
                      ipv6: Optional[Tuple[IPv6Network, IPv6Network]] = None) -> str:
    """The exact text flanneld writes; `ipv6` = (IPv6Network, the IPv6 lease) when EnableIPv6
    (its two lines follow the IPv4 ones, in Go's IPv6 text). IPv6-only (EnableIPv4 false):
    `network` and `subnet` None, no FLANNEL_NETWORK/FLANNEL_SUBNET lines, as flannel."""
    text = ""
    if network is not None and subnet is not None:
        text = (f"FLANNEL_NETWORK={network}\n"
                f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}\n")
    if ipv6 is not None:
        net6, subnet6 = ipv6
        text += (f"FLANNEL_IPV6_NETWORK={go_ip6_string(net6.network_address)}/{net6.prefixlen}\n"
                 f"FLANNEL_IPV6_SUBNET={go_ip6_string(subnet6.network_address + 1)}/{subnet6.prefixlen}\n")
    return text + (f"FLANNEL_MTU={int(mtu)}\n"
                   f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n")


def _makedirs(path: str) -> None:
    """Create missing parents with mode 0755 exactly (chmod, so the umask does not narrow them);
    existing directories are left as they are."""
    if not path or os.path.isdir(path):
        return
    _makedirs(os.path.dirname(path.rstrip("/")))
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)


def write_subnet_file(path: str, network: Optional[IPv4Network], subnet: Optional[IPv4Network], mtu: int,
                      ip_masq: bool, ipv6: Optional[Tuple[IPv6Network, IPv6Network]] = None) -> None:
    """Atomically replace `path`: readers see the old file or the new one, never a torn one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    _makedirs(directory)
    data = render_subnet_env(network, subnet, mtu, ip_masq, ipv6).encode()
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; best effort (some filesystems refuse O_RDONLY dir fsync).
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    # An unquoted value ends at an inline comment (godotenv, which flannel uses to read the file).
    return value.split(" #", 1)[0].rstrip()


def read_subnet_env(path: str) -> Dict[str, str]:
    """KEY=VALUE pairs of an env file ({} if it does not exist). Blank lines, `#` comments and an
    `export ` prefix are accepted, like the godotenv reader flannel uses."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    env: Dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            continue
        env[key.strip()] = _unquote(value.strip())
    return env


def parse_cidr(text: str) -> IPv4Network:
    """Go's net.ParseCIDR for IPv4: "10.5.72.1/24" -> 10.5.72.0/24. ValueError if malformed."""
    m = _CIDR_RE.match(text.strip())
    if not m or int(m.group(2)) > 32:
        raise ValueError(f"invalid CIDR address: {text!r}")
    addr = ipaddress.IPv4Address(m.group(1))
    return ipaddress.IPv4Network((addr, int(m.group(2))), strict=False)


def _read_prev(path: str, key: str, parse: Callable[[str], Any], what: str) -> Any:
    """`key` of a previous run's subnet file, parsed; None (logged) when the file cannot be read
    or the value is absent or unusable."""
    try:
        text = read_subnet_env(path).get(key)
    except OSError as e:
        log.warning("Could not read previous subnet file %s: %s", path, e)
        return None
    if text is None:
        log.info("No previous %s found in %s", what, path)
        return None
    try:
        subnet = parse(text)
    except ValueError:
        log.warning("Ignoring unparsable %s=%r in %s", key, text, path)
        return None
    log.info("Found previous %s %s in %s", what, subnet, path)
    return subnet


def read_prev_subnet(path: str) -> Optional[IPv4Network]:
    """FLANNEL_SUBNET from a previous run's subnet file, as a network; None if absent or unusable."""
    return _read_prev(path, "FLANNEL_SUBNET", parse_cidr, "subnet")


def parse_cidr6(text: str) -> IPv6Network:
    """Go's net.ParseCIDR for IPv6 text: "fc00:0:0:1::1/64" -> fc00:0:0:1::/64. ValueError if
    malformed or IPv4."""
    addr, slash, plen = text.strip().partition("/")
    if not slash or not plen.isascii() or not plen.isdigit() or int(plen) > 128:
        raise ValueError(f"invalid CIDR address: {text!r}")
    return ipaddress.IPv6Network((ipaddress.IPv6Address(addr), int(plen)), strict=False)


def read_prev_ipv6_subnet(path: str) -> Optional[IPv6Network]:
    """FLANNEL_IPV6_SUBNET from a previous run's subnet file (flannel's
    ReadIP6CIDRFromSubnetFile), as a network; None if absent or unusable."""
    return _read_prev(path, "FLANNEL_IPV6_SUBNET", parse_cidr6, "IPv6 subnet")
