"""Errors shared by the agent's modules."""
from __future__ import annotations


class RegistryError(RuntimeError):
    """An etcd registry operation failed."""


class SubnetExists(RegistryError):
    """A lease create lost the race: the subnet key already exists (flannel: "subnet already exists")."""


class Compacted(RegistryError):
    """The requested etcd revision has been compacted away; the caller must re-list."""


class EtcdUnreachable(RegistryError):
    """No configured etcd endpoint answered."""


class LeaseLost(RuntimeError):
    """This node's own lease was revoked or expired ("Lease has been revoked")."""


class OutOfSubnets(RuntimeError):
    """No free subnet is left in the configured range (flannel: "out of subnets")."""
