"""Log lines in flanneld's form (klog's header), so tooling that parses flanneld logs parses ours.

    I1201 07:22:01.123456    4242 daemon.py:120] Acquired lease 10.10.16.0/20

klog's `Lmmdd hh:mm:ss.uuuuuu pid file:line] msg`: severity letter (I, W, E, F), local month and
day, local time with microseconds, the pid right-aligned in 7 columns, the source file's base name
and line (klog internal/buffer FormatHeader). Python's DEBUG maps to I (klog's V-levels are
info lines too) and CRITICAL to F.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

_HANDLER_NAME = "fastflannel-klog"
_SEVERITY = ((logging.CRITICAL, "F"), (logging.ERROR, "E"), (logging.WARNING, "W"))


def severity_char(levelno: int) -> str:
    for level, char in _SEVERITY:
        if levelno >= level:
            return char
    return "I"


def klog_header(levelno: int, created: float, pid: int, filename: str, lineno: int) -> str:
    # Rounded, not truncated: a float's 0.000007 may be 0.00000699...
    secs, usec = divmod(int(round(created * 1e6)), 1000000)
    t = time.localtime(secs)
    return (f"{severity_char(levelno)}{t.tm_mon:02d}{t.tm_mday:02d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{usec:06d} "
            f"{pid % 10**7:7d} {filename}:{max(lineno, 0)}] ")


class KlogFormatter(logging.Formatter):
    """One klog line per record; tracebacks follow on their own lines, as klog prints them."""

    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        text = klog_header(record.levelno, record.created, self._pid, record.filename, record.lineno)
        text += record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def setup(verbosity: int, stream: TextIO | None = None) -> None:
    """Root logging for the daemon: klog lines on stderr (journald takes them from there).

    -v=0 info, -v>=1 debug for fastflannel's own loggers (flannel: -v=1 enables data-path error
    logs); library loggers (grpc) stay at INFO until -v=3."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KlogFormatter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)       # a second setup() replaces ours, leaves others (pytest's) alone
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 3 else logging.INFO)
    logging.getLogger("fastflannel").setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
