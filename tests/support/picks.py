"""Stand-ins for the lease policy's random choice (SubnetManager's `rng`), to force a pick."""
from __future__ import annotations

from ipaddress import IPv6Network


class Pick:
    """Chooses the i4-th free IPv4 subnet and the i6-th free IPv6 one."""

    def __init__(self, i4: int, i6: int):
        self.i4, self.i6 = i4, i6

    def choice(self, seq):
        return seq[self.i6 if isinstance(seq[0], IPv6Network) else self.i4]
