"""A registry's watch_leases drained on a thread, for the registry tests (v3, v2, their faults
and the contract both stores meet): batches are kept with the time each arrived, and every wait
is bounded."""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, List, Tuple

from fastflannel.agent import metrics
from fastflannel.agent.lease import LeaseEvent
from fastflannel.agent.registry_api import WatchBatch

STOP_WAIT_S = 5.0               # a watch must end this soon after stop


class LeaseWatch:
    """`watch_leases(revision, stop)` on a daemon thread. With `no_relist`, a batch that is a
    re-list (a snapshot instead of events) fails the test that waits for events."""

    def __init__(self, reg: Any, revision: int, no_relist: bool = False):
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.no_relist = no_relist
        self.q: queue.Queue[Tuple[float, WatchBatch]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(reg, revision), daemon=True)
        self.thread.start()

    def _run(self, reg: Any, revision: int) -> None:
        try:
            for b in reg.watch_leases(revision, self.stop):
                self.q.put((time.monotonic(), b))
        finally:
            self.finished.set()

    def next(self, timeout: float) -> Tuple[float, WatchBatch]:
        """(arrival time, batch) of the next batch."""
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch batch within {timeout}s") from None

    def batches(self, n: int, timeout: float = 10) -> List[WatchBatch]:
        return [self.next(timeout)[1] for _ in range(n)]

    def timed_events(self, n: int, timeout: float = 10) -> List[Tuple[float, LeaseEvent]]:
        """The next n events (at least; a batch is never split), each with its batch's arrival."""
        out: List[Tuple[float, LeaseEvent]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(out)} of {n} events after {timeout}s: {out}")
            t, b = self.next(left)
            assert not (self.no_relist and b.snapshot is not None), f"an unexpected re-list: {b}"
            out.extend((t, ev) for ev in b.events)
        return out

    def events(self, n: int, timeout: float = 10) -> List[LeaseEvent]:
        return [ev for _, ev in self.timed_events(n, timeout)]

    def close(self) -> float:
        """Stop the watch; the seconds it took to end (it must, within STOP_WAIT_S)."""
        t0 = time.monotonic()
        self.stop.set()
        self.thread.join(STOP_WAIT_S)
        assert not self.thread.is_alive(), "watch_leases did not end after stop"
        return time.monotonic() - t0


def watch_errors() -> float:
    """fastflannel_etcd_watch_reconnects_total{reason="error"} now (this process's watches)."""
    return dict(metrics.WATCH_RECONNECTS.samples()).get(("error",), 0)
