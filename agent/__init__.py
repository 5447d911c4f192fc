"""fastflannel control plane: config, etcd leases, backends, netlink, the daemon and its CLI."""
__version__ = "0.1.0"
