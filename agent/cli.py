"""`fastflannel`: flanneld's command line (flags, FLANNELD_* variables), plus `fastflannel demo`.

Every operational failure (bad flag, bad config, unreachable etcd, no subnet left, lost lease, a
refused netlink request, a missing iptables) is a FastflannelError and ends in `main` with one
line on stderr and its exit status (2 for a bad flag, else 1), never a traceback.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import List, Optional

from . import __version__
from .errors import FastflannelError, HelpRequested, LeaseLost

log = logging.getLogger("fastflannel")


def _setup_logging(verbosity: int) -> None:
    # klog-like: -v=0 info, -v>=1 debug (flannel: -v=1 enables data-path error logs).
    # Library loggers (pyroute2, grpc) stay at INFO; -v=3 and up opens them too.
    logging.basicConfig(level=logging.DEBUG if verbosity >= 3 else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s",
                        datefmt="%m%d %H:%M:%S")
    logging.getLogger("fastflannel").setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)


def run_daemon(argv: List[str]) -> int:
    from .flags import parse_flags
    opts = parse_flags(argv, os.environ)
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
    except LeaseLost:
        log.error("Lease has been revoked. Shutting down daemon.")     # flanneld's words
        raise


def main(argv: Optional[List[str]] = None) -> int:
    """The one place where errors end: one line on stderr and the error's exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "demo":
            from fastflannel.lab.demo import main as demo_main  # the lab ships beside the daemon, apart from it
            return demo_main(argv[1:])
        return run_daemon(argv)
    except HelpRequested as h:
        print(h.text)
        return h.exit_code
    except FastflannelError as e:
        print(f"fastflannel: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        # An OS failure no module turned into its own error (a file that cannot be written, a
        # port in use) is still an operational failure: one line, not a traceback.
        print(f"fastflannel: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
