"""`fastflannel`: flanneld's command line (flags, FLANNELD_* variables), plus `fastflannel demo` and
`fastflannel docker-opts` (flannel's mk-docker-opts.sh).

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
    from .logfmt import setup      # klog lines, as flanneld writes them (agent/logfmt.py)
    setup(verbosity)


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
        print(str(h), file=sys.stderr)          # flanneld: usage on stderr, exit 0
        return 0
    except FlagError as e:
        # One line, not Go's error-then-usage (flanneld's usage() then exits 0): a typo in a unit
        # file should fail the unit with a message the journal shows whole.
        print(f"fastflannel: {e}", file=sys.stderr)
        return 2
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
    if argv and argv[0] == "docker-opts":       # flannel's mk-docker-opts.sh (agent/dockeropts.py)
        from .dockeropts import main as dockeropts_main
        return dockeropts_main(argv[1:])
    return run_daemon(argv)


if __name__ == "__main__":
    sys.exit(main())
