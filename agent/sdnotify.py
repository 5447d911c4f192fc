"""systemd's notify protocol (sd_notify(3)): READY=1, STOPPING=1 and watchdog pings.

flanneld sends `READY=1` once its subnet file is written and the backend runs (main.go,
go-systemd's `daemon.SdNotify`), so distributions ship `Type=notify` units; fastflannel does
the same, and also says `STOPPING=1` on shutdown and pings the watchdog when systemd asks for
one (`WATCHDOG_USEC`). One datagram per message to the AF_UNIX socket named by
`$NOTIFY_SOCKET`: a path, or `@name` for an abstract socket. Without `$NOTIFY_SOCKET` (not under
systemd) every call is a no-op. Failures are logged, never fatal (flanneld logs and goes on).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Callable

log = logging.getLogger("fastflannel.sdnotify")


def _address(name: str) -> str:
    # A leading "@" names an abstract socket: its real first byte is NUL (unix(7)).
    return "\0" + name[1:] if name.startswith("@") else name


class Notifier:
    """Sends state lines to systemd; `socket_name` None means "not supervised"."""

    def __init__(self, socket_name: str | None, watchdog_usec: int | None = None):
        self.socket_name = socket_name or None
        self.watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), _watchdog_usec(env))

    def notify(self, state: str) -> bool:
        """Send one message (e.g. "READY=1"); True if it was sent."""
        if not self.socket_name:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(state.encode(), _address(self.socket_name))
            return True
        except OSError as e:
            log.error("Failed to notify systemd the message %s: %s", state.replace("\n", " "), e)
            return False

    def watchdog_interval_s(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        if not self.socket_name or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2 / 1e6


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC when it is meant for this process (sd_watchdog_enabled(3)): a positive
    integer, and WATCHDOG_PID, if set, is our pid."""
    text = env.get("WATCHDOG_USEC", "")
    if not text:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(text)
    except ValueError:
        log.warning("Ignoring WATCHDOG_USEC=%r: not an integer", text)
        return None
    return usec if usec > 0 else None


class Watchdog:
    """Pings `WATCHDOG=1` every half timeout while `healthy()` says so; a daemon that is stuck
    or broken stops pinging, and systemd restarts it (WatchdogSec= with Restart=on-failure)."""

    def __init__(self, notifier: Notifier, healthy: Callable[[], bool], stop: threading.Event):
        self.notifier = notifier
        self.healthy = healthy
        self.stop = stop
        self.pings = 0
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        interval = self.notifier.watchdog_interval_s()
        if interval is None:
            return False
        log.info("systemd watchdog: pinging every %.3f s while healthy", interval)
        self._thread = threading.Thread(target=self._run, args=(interval,), name="sd-watchdog", daemon=True)
        self._thread.start()
        return True

    def _run(self, interval: float) -> None:
        while not self.stop.wait(interval):
            if self._healthy() and self.notifier.notify("WATCHDOG=1"):
                self.pings += 1

    def _healthy(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception as e:  # a broken health check means "not healthy", never a dead thread
            log.warning("health check for the systemd watchdog failed: %s", e)
            return False

    def join(self, timeout: float = 2.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
