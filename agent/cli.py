"""`fastflannel`: flanneld's command line (flags, FLANNELD_* variables), plus `fastflannel demo`.

Every expected failure (bad flag, bad config, unreachable etcd, no subnet left, lost lease) ends
with one clear line on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import List, Optional

from . import __version__

log = logging.getLogger("fastflannel")


def _setup_logging(verbosity: int) -> None:
    # klog-like: -v=0 info, -v>=1 debug (flannel: -v=1 enables data-path error logs).
    # Library loggers (pyroute2, grpc) stay at INFO; -v=3 and up opens them too.
    logging.basicConfig(level=logging.DEBUG if verbosity >= 3 else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s",
                        datefmt="%m%d %H:%M:%S")
    logging.getLogger("fastflannel").setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)


def _expected_errors() -> tuple:
    from . import errors
    from .backends.base import BackendError
    from .config import ConfigError
    from .daemon import DaemonError
    from .iface import InterfaceError
    return (errors.RegistryError, errors.LeaseLost, errors.OutOfSubnets, BackendError, ConfigError,
            DaemonError, InterfaceError, OSError)


def run_daemon(argv: List[str]) -> int:
    from .flags import FlagError, HelpRequested, parse_flags
    try:
        opts = parse_flags(argv, os.environ)
    except HelpRequested as h:
        print(str(h), file=sys.stdout)
        return 0
    except FlagError as e:
        print(f"fastflannel: {e}", file=sys.stderr)
        return 2
    if opts.version:
        print(f"fastflannel {__version__} (flanneld-compatible)")
        return 0
    _setup_logging(opts.v)
    from .daemon import Daemon
    daemon = Daemon(opts)

    def on_signal(signum, _frame):
        log.info("Received %s, shutting down", signal.Signals(signum).name)
        daemon.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return daemon.run()
    except _expected_errors() as e:
        from . import errors
        if isinstance(e, errors.LeaseLost):
            log.error("Lease has been revoked. Shutting down daemon.")
        print(f"fastflannel: {e}", file=sys.stderr)
        return 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from fastflannel.lab.demo import main as demo_main    # the lab ships beside the daemon, apart from it
        return demo_main(argv[1:])
    return run_daemon(argv)


if __name__ == "__main__":
    sys.exit(main())
