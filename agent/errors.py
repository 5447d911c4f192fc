"""Every exception the agent raises, under one root: `FastflannelError`.

One module holds them all (httptools' `errors.py` and msgpack's `exceptions.py` are the model),
so the registry, the lease policy, the backends and the daemon import them without importing
each other, and the CLI catches the root in one place: one line on stderr and `exit_code`, never
a traceback for an operational failure. Modules re-export the classes they raise
(`config.ConfigError` is `errors.ConfigError`). Errors of outside libraries are converted at the
one module that calls the library: the kernel's rtnetlink in `netlink`, etcd3/grpc in `registry`, the
iptables binary in `ipmasq`, the fast path's OSError/ValueError in `backends/udp`.
See docs/architecture.md §"Errors".
"""
from __future__ import annotations

from typing import Optional


class FastflannelError(Exception):
    """The root. `str(e)` is one line for the operator; `exit_code` is the CLI's exit status."""

    exit_code = 1


# -- command line and configuration -------------------------------------------------------------
class FlagError(FastflannelError, ValueError):
    """A bad command line or FLANNELD_* value."""

    exit_code = 2                        # Go's flag package exits 2 on a usage error


class HelpRequested(FastflannelError):
    """-h/-help/--help was given (Go's flag.ErrHelp); `.text` is the usage text for stdout."""

    exit_code = 0

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class ConfigError(FastflannelError, ValueError):
    """The network config is invalid; the message names the field (flannel's wording where it has one)."""


class LeaseFormatError(FastflannelError, ValueError):
    """A lease key or value that flannel would not have written."""


# -- the registry and the lease -----------------------------------------------------------------
class RegistryError(FastflannelError):
    """The etcd registry failed."""


class SubnetExists(RegistryError):
    """create_lease lost a race: the key already exists (etcd txn `Version(key) == 0` failed)."""


class Compacted(RegistryError):
    """A watch asked for a revision etcd has compacted away; the caller must re-list."""


class EtcdUnreachable(RegistryError):
    """No etcd endpoint answered."""


class LeaseLost(FastflannelError):
    """Our subnet lease is gone or now belongs to another host; the daemon must exit."""


class OutOfSubnets(FastflannelError):
    """No free subnet is left in [SubnetMin, SubnetMax] (flannel: "out of subnets")."""


# -- the host ------------------------------------------------------------------------------------
class InterfaceError(FastflannelError):
    """No usable external interface; the message is flannel's where flannel has one."""


class NetlinkError(FastflannelError):
    """A netlink request failed or could not be encoded; `errno` is the kernel's error number
    when there is one (e.g. errno.ENODEV for a missing link)."""

    def __init__(self, message: str, errno: Optional[int] = None):
        super().__init__(message)
        self.errno = errno


class IptablesError(FastflannelError):
    """An iptables command failed or could not run; the message carries the command and its stderr."""


class BackendError(FastflannelError):
    """A backend cannot start or program the kernel."""


class DaemonError(FastflannelError):
    """A fatal condition of the daemon's own (e.g. a config that cannot be used)."""


class StatusError(FastflannelError):
    """`fastflannel status` got no usable answer from a daemon."""


__all__ = ["BackendError", "Compacted", "ConfigError", "DaemonError", "EtcdUnreachable", "FastflannelError",
           "FlagError", "HelpRequested", "InterfaceError", "IptablesError", "LeaseFormatError", "LeaseLost",
           "NetlinkError", "OutOfSubnets", "RegistryError", "StatusError", "SubnetExists"]
