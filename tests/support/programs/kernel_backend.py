"""Hold one kernel backend (vxlan or host-gw) and run the commands a test sends as JSON lines.

Run inside a host namespace by tests/test_backends_kernel.py: one command per stdin line
({"op": "new" | "setup" | "add_peer" | "remove_peer" | "sync_peers" | "check" | "inject", ...}),
one JSON answer per stdout line ({"ok": true, ...} or {"error": "<type>: <message>"}), so backend
state lives across steps as it does in the daemon. Logs go to stderr.

"inject" makes one kernel call raise an unexpected exception whenever the repr of its arguments
contains a string (a fault in one peer's kernel call), to test that one bad peer never stops the
others. The backends send per-peer objects as batches of requests built by agent/rtnl.py
(rtnl.route_replace, rtnl.neigh_delete, ...), so the function of that name is replaced both there
and in agent/netlink.py (the one-request API); a route request's arguments also match as
"DST/PLEN" (rtnl takes the address and the prefix length apart).
"""
import ipaddress
import json
import logging
import sys

from fastflannel.agent import netlink, rtnl
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


def _described(args: tuple) -> str:
    text = repr(args)
    if len(args) >= 2 and isinstance(args[1], int) and not isinstance(args[0], str):
        text += f" {ipaddress.IPv4Address(args[0])}/{args[1]}"      # rtnl's (dst, plen, ...)
    return text


def inject(fn_name: str, match: str, exc_name: str) -> None:
    exc = {"RuntimeError": RuntimeError, "ValueError": ValueError, "NetlinkError": netlink.NetlinkError}[exc_name]
    found = False
    for module in (netlink, rtnl):
        real = getattr(module, fn_name, None)
        if real is None:
            continue
        found = True

        def failing(*args, _real=real, **kw):
            if match in _described(args):
                raise exc(f"injected failure of {fn_name}{args!r}")
            return _real(*args, **kw)
        setattr(module, fn_name, failing)
    if not found:
        raise ValueError(f"no kernel call named {fn_name}")


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
