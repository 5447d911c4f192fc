"""Hold one kernel backend (vxlan or host-gw) and run the commands a test sends as JSON lines.

Run inside a host namespace by tests/test_backends_kernel.py: one command per stdin line
({"op": "new" | "setup" | "add_peer" | "remove_peer" | "sync_peers" | "check" | "inject", ...}),
one JSON answer per stdout line ({"ok": true, ...} or {"error": "<type>: <message>"}), so backend
state lives across steps as it does in the daemon. Logs go to stderr.

"inject" makes one netlink function raise an unexpected exception whenever the repr of its
arguments contains a string (a fault in one peer's kernel call), to test that one bad peer never
stops the others.
"""
import ipaddress
import json
import logging
import sys

from fastflannel.agent import netlink
from fastflannel.agent.backends import new_backend
from fastflannel.agent.backends.base import BackendOptions
from fastflannel.agent.config import parse_config
from fastflannel.agent.iface import choose_external_interface
from fastflannel.agent.lease import Lease, LeaseAttrs

NETWORK = "10.0.0.0/8"


def lease(d):
    return Lease(ipaddress.ip_network(d["subnet"]),
                 LeaseAttrs(ipaddress.ip_address(d["ip"]), d.get("type"), d.get("data")))


def config(kind: str, backend: dict, network: str = NETWORK):
    return parse_config(json.dumps({"Network": network, "Backend": dict(backend, Type=kind)}))


def inject(fn_name: str, match: str, exc_name: str) -> None:
    real = getattr(netlink, fn_name)
    exc = {"RuntimeError": RuntimeError, "ValueError": ValueError, "NetlinkError": netlink.NetlinkError}[exc_name]

    def failing(*args, **kw):
        if match in repr(args):
            raise exc(f"injected failure of {fn_name}{args!r}")
        return real(*args, **kw)
    setattr(netlink, fn_name, failing)


def execute(be, cfg, cmd: dict):
    """Run one command; returns (backend, its network config, answer)."""
    op, res = cmd["op"], {}
    if op == "new":
        ext = choose_external_interface(["eth0"], [], cmd.get("public_ip"), None)
        cfg = config(cmd["kind"], cmd["cfg"])
        be = new_backend(ext, cfg, BackendOptions(state_dir=cmd["state_dir"]))
        res = {"attrs": be.lease_attrs().to_json().decode(), "mtu": be.mtu()}
    elif op == "setup":
        cfg = config(cfg.backend_type, cfg.backend, cmd["network"])
        be.setup(lease(cmd["lease"]), cfg)
    elif op in ("add_peer", "remove_peer"):
        getattr(be, op)(lease(cmd["lease"]))
    elif op == "sync_peers":
        be.sync_peers([lease(d) for d in cmd["leases"]])
    elif op == "check":
        be.check()
    elif op == "inject":
        inject(cmd["fn"], cmd["match"], cmd.get("exc", "RuntimeError"))
    else:
        raise ValueError(op)
    res["ok"] = True
    return be, cfg, res


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    be = cfg = None
    for line in sys.stdin:
        try:
            be, cfg, res = execute(be, cfg, json.loads(line))
        except Exception as e:  # every failure goes back to the test as an answer
            res = {"error": type(e).__name__ + ": " + str(e)}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
