"""`fastflannel`: flanneld's command line (flags, FLANNELD_* variables), plus `fastflannel demo`,
`fastflannel docker-opts` (flannel's mk-docker-opts.sh) and `fastflannel status` (a running daemon,
at a glance: agent/status.py).

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
    from .logfmt import setup  # klog lines, as flanneld writes them (agent/logfmt.py)
    setup(verbosity)


def run_daemon(argv: List[str]) -> int:
    from .flags import parse_flags
    opts = parse_flags(argv, os.environ)
    if opts.version and "version" in opts.set_on_command_line:
        # flanneld prints its bare version on stderr; it checks -version before FLANNELD_* apply.
        print(f"v{__version__}", file=sys.stderr)
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
        if argv and argv[0] == "docker-opts":       # flannel's mk-docker-opts.sh (agent/dockeropts.py)
            from .dockeropts import main as dockeropts_main
            return dockeropts_main(argv[1:])
        if argv and argv[0] == "status":            # ask a running daemon (agent/status.py)
            from .status import main as status_main
            return status_main(argv[1:])
        return run_daemon(argv)
    except HelpRequested as h:
        print(h.text, file=sys.stderr)              # flanneld: usage on stderr, exit 0
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
