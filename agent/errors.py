"""Exceptions shared by the registry, the lease policy and the daemon.

Kept in a module of their own so that `registry` (etcd) and `subnets` (policy) can both import
them without importing each other.
"""
from __future__ import annotations


class RegistryError(RuntimeError):
    """The etcd registry failed; the message is for the operator."""


class SubnetExists(RegistryError):
    """create_lease lost a race: the key already exists (etcd txn `Version(key) == 0` failed)."""


class Compacted(RegistryError):
    """A watch asked for a revision etcd has compacted away; the caller must re-list."""


class EtcdUnreachable(RegistryError):
    """No etcd endpoint answered."""


class LeaseLost(RuntimeError):
    """Our subnet lease is gone or now belongs to another host; the daemon must exit."""


class OutOfSubnets(RuntimeError):
    """No free subnet is left in [SubnetMin, SubnetMax] (flannel: "out of subnets")."""
