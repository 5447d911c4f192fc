"""Operator-facing output in flanneld's forms: klog log lines, `-version`, usage."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

from fastflannel.agent import __version__
from fastflannel.agent.flags import usage
from fastflannel.agent.logfmt import KlogFormatter, klog_header, severity_char

# klog's header (k8s.io/klog internal/buffer FormatHeader): Lmmdd hh:mm:ss.uuuuuu pid file:line]
KLOG_RE = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) {1,7}(\d{1,7}) ([^ :\]]+):(\d+)\] ")


def _local(y, mo, d, h, mi, s, usec):
    return time.mktime((y, mo, d, h, mi, s, 0, 0, -1)) + usec / 1e6


def test_header_is_klogs_byte_for_byte():
    created = _local(2026, 12, 1, 7, 22, 1, 123456)
    assert klog_header(logging.INFO, created, 4242, "daemon.py", 120) == \
        "I1201 07:22:01.123456    4242 daemon.py:120] "
    assert klog_header(logging.ERROR, _local(2026, 3, 9, 23, 5, 9, 7), 1, "x.py", 7) == \
        "E0309 23:05:09.000007       1 x.py:7] "
    assert klog_header(logging.WARNING, created, 4194304, "subnets.py", 3) == \
        "W1201 07:22:01.123456 4194304 subnets.py:3] "


def test_severity_letters():
    assert [severity_char(lv) for lv in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                                        logging.CRITICAL)] == ["I", "I", "W", "E", "F"]


def test_formatter_uses_the_callers_file_and_line_and_appends_tracebacks():
    record = logging.LogRecord("fastflannel", logging.ERROR, "/x/agent/daemon.py", 42, "lease %s lost",
                               ("10.10.16.0/20",), None)
    line = KlogFormatter().format(record)
    m = KLOG_RE.match(line)
    assert m and m.group(7) == str(os.getpid()) and (m.group(8), m.group(9)) == ("daemon.py", "42")
    assert line.endswith("] lease 10.10.16.0/20 lost")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("fastflannel", logging.ERROR, "a.py", 1, "failed", (), sys.exc_info())
    lines = KlogFormatter().format(record).splitlines()
    assert KLOG_RE.match(lines[0]) and lines[1].startswith("Traceback") and lines[-1] == "ValueError: boom"


def test_daemon_logs_klog_lines(tmp_path):
    """The real daemon, its etcd unreachable (a closed loopback port): every stderr line it
    writes before SIGTERM is a klog line."""
    p = subprocess.Popen([sys.executable, "-m", "fastflannel.agent.cli", "-etcd-endpoints=http://127.0.0.1:9",
                          f"-subnet-file={tmp_path / 'subnet.env'}"], stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, FASTFLANNEL_STATE_DIR=str(tmp_path)))
    try:
        time.sleep(3)
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=15)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "the daemon logged nothing"
    assert all(KLOG_RE.match(line) for line in lines if not line.startswith((" ", "Traceback"))), err
    assert any(line.startswith("E") for line in lines), err           # etcd unreachable is an error
    assert any("shutting down" in line for line in lines), err


def _cli(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "fastflannel.agent.cli", *argv], capture_output=True,
                          text=True, timeout=30, env=dict(os.environ, **(env or {})))


def test_version_as_flanneld_prints_it_on_stderr():
    p = _cli("-version")
    assert (p.returncode, p.stdout, p.stderr) == (0, "", f"v{__version__}\n")
    p = _cli("--version")
    assert (p.returncode, p.stderr) == (0, f"v{__version__}\n")


def test_usage_goes_to_stderr_with_exit_0():
    p = _cli("-help")
    assert (p.returncode, p.stdout) == (0, "")
    assert p.stderr == usage() + "\n" and p.stderr.startswith("Usage: fastflannel [OPTION]...")


def test_bad_flag_is_go_flags_message_on_one_line():
    p = _cli("-no-such-flag")
    assert (p.returncode, p.stdout) == (2, "")
    assert p.stderr == "fastflannel: flag provided but not defined: -no-such-flag\n"
