"""vxlan in an IPv6-only network (EnableIPv4 false, docs/flannel-compat.md §"IPv6-only"):
`flannel-v6.<VNI>` alone (agent/backends/vxlan6.py's device and per-peer state), no
`flannel.<VNI>`, and the lease flannel writes for such a host: PublicIP 0.0.0.0, PublicIPv6,
BackendType vxlan, BackendV6Data, no BackendData.
"""
from __future__ import annotations

import ipaddress
import logging

from .. import metrics, netlink
from ..config import NetworkConfig
from ..iface import ExternalInterface
from ..lease import Lease, LeaseAttrs
from .base import BackendOptions, Ipv6OnlyPeers
from .vxlan import VxlanParams
from .vxlan6 import VxlanV6Device

log = logging.getLogger("fastflannel.vxlan")


class Ipv6OnlyVxlan(Ipv6OnlyPeers):
    """vxlan in an IPv6-only network (EnableIPv4 false): `flannel-v6.<VNI>` alone, no
    `flannel.<VNI>`; the lease has PublicIP 0.0.0.0 and no BackendData, as flannel writes it
    (docs/flannel-compat.md §"IPv6-only"). FLANNEL_MTU is the v6 device's MTU (interface − 70):
    flannel writes interface − 50, more than an IPv6 underlay carries in one VXLAN packet."""
    name = "vxlan"
    v6: VxlanV6Device

    def __init__(self, ext: ExternalInterface, cfg: NetworkConfig, opts: BackendOptions):
        assert cfg.ipv6_network is not None
        self.ext = ext
        self.params = VxlanParams.from_config(cfg, opts)
        self.v6 = VxlanV6Device(self.params, ext, cfg.ipv6_network)

    def mtu(self) -> int:
        return self.v6.mtu()

    def lease_attrs(self) -> LeaseAttrs:
        return LeaseAttrs(ipaddress.IPv4Address(0), "vxlan", None, self.ext.ext_v6_addr,
                          {"VNI": self.params.vni, "VtepMAC": self.v6.mac})

    def setup(self, lease: Lease, cfg: NetworkConfig) -> None:
        self.v6.setup(lease)

    def replace_vtep_mac(self) -> LeaseAttrs:
        """Another host announces our VTEP MAC (docs/architecture.md §"Lease admission"): a new
        one on flannel-v6.<VNI>; returns the lease attrs to announce."""
        self.v6.replace_mac()
        return self.lease_attrs()

    def describe(self) -> dict:
        """The options `fastflannel status` shows."""
        return {"device": self.v6.dev, "vni": self.params.vni, "mtu": self.mtu(), "vtep_mac": self.v6.mac,
                "port": self.params.port or netlink.VXLAN_DEFAULT_PORT, "direct_routing": self.params.direct_routing}

    def observe(self) -> metrics.DataPlane:
        try:
            return metrics.DataPlane(devices={self.v6.dev: netlink.link_stats(self.v6.dev)})
        except netlink.NetlinkError:
            return metrics.DataPlane()

    def close(self) -> None:
        pass          # flannel leaves the device and the peers' state in place
