"""Processes for the lab: run a command, stop a process group, wait for a condition, find a program.

The one `wait_for` of the project's demo, tests and benchmarks lives here, as does the directory of
helper programs (`lab/programs/*.py`), which run as `sys.executable <file> <args>`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Callable, List, Sequence

PROGRAMS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs")


class LabError(RuntimeError):
    """The lab could not build or drive what it was asked for; the message says what and why."""


def run(cmd: Sequence[str], check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
    """Run `cmd` to completion, capturing text output; LabError on a non-zero exit when `check`."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> rc={p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def stop_process(p: subprocess.Popen, timeout: float = 5) -> None:
    """SIGTERM the process group of `p` (started with start_new_session), SIGKILL after `timeout` s."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_process(p, timeout)


def kill_process(p: subprocess.Popen, timeout: float = 5) -> None:
    """SIGKILL the process group of `p` and reap it."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(timeout)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` every `interval` s for up to `timeout` s; True once it holds. It is asked
    once more at the deadline, so a slow last poll still counts. Exceptions propagate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def find_binary(name: str, hint: str) -> str:
    """The path of `name` on PATH, else LabError naming what to install (`hint`)."""
    path = shutil.which(name)
    if path:
        return path
    raise LabError(f"{name} not found: {hint}")


def program(name: str, *args: str) -> List[str]:
    """argv running the helper program `lab/programs/<name>.py` with this interpreter."""
    path = os.path.join(PROGRAMS_DIR, f"{name}.py")
    if not os.path.isfile(path):
        raise LabError(f"no lab program {name!r} in {PROGRAMS_DIR}")
    return [sys.executable, path, *args]
