"""The retry policy the two registries' lease watches share (etcd v3: agent/registry.py, etcd
v2: agent/registry_v2.py; docs/architecture.md §"The registry contract"): flannel's back-off,
100 ms doubling to 5 s; one warning per outage and one line when it ends; after a compaction a
re-list at once, backing off only when compactions repeat; and the watch's metrics (its
reconnects by reason, the etcd connection state)."""
from __future__ import annotations

import logging
import threading
import time

from . import metrics

log = logging.getLogger("fastflannel.registry")

BACKOFF_MIN_S = 0.1          # flannel's watch reconnect back-off: 100 ms doubling ...
BACKOFF_MAX_S = 5.0          # ... to a 5 s cap


class WatchRetry:
    """One watch loop's retry state. `unit` names its position ("revision" in v3, "index" in v2)
    in the log lines."""

    def __init__(self, stop: threading.Event, unit: str):
        self.stop, self.unit = stop, unit
        self.backoff = BACKOFF_MIN_S
        self.compactions = 0                    # in a row, without a watch response in between
        self.failing_since: float | None = None

    def answered(self, url: str | None, resume_at: int) -> None:
        """etcd answered the watch: the back-off starts over and an outage, if any, is over."""
        self.backoff, self.compactions = BACKOFF_MIN_S, 0
        metrics.ETCD.ok(url)
        if self.failing_since is not None:
            log.info("watching leases again at %s (from %s %d, after %.1fs)",
                     url, self.unit, resume_at, time.monotonic() - self.failing_since)
            self.failing_since = None

    def moved(self, why: Exception, resume_at: int) -> None:
        """The registry switched endpoints under the watch: resume on the new one at once."""
        metrics.WATCH_RECONNECTS.labels("moved").inc()
        log.info("%s (resuming from %s %d)", why, self.unit, resume_at)

    def compacted(self, why: Exception) -> None:
        """The watch's position is gone: the caller re-lists. A second compaction in a row (the
        listing itself outrun) waits first, rather than spin (flannel #2470 spun here)."""
        log.warning("%s; re-listing leases", why)
        metrics.WATCH_RECONNECTS.labels("compacted").inc()
        self.compactions += 1
        if self.compactions > 1:
            self._wait()

    def failed(self, why: Exception, url: str | None) -> None:
        """The watch failed: count it, log the outage once, wait the back-off."""
        metrics.WATCH_RECONNECTS.labels("error").inc()
        if self.failing_since is None:
            metrics.ETCD.failed(url)
            self.failing_since = time.monotonic()
            log.warning("watching leases failed (retrying with back-off up to %.0fs): %s", BACKOFF_MAX_S, why)
        else:
            log.debug("watching leases failed again (retrying in %.1fs): %s", self.backoff, why)
        self._wait()

    def _wait(self) -> None:
        self.stop.wait(self.backoff)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
