"""What follows a commit, off the ingest path: the after-stored hooks on a thread of their own.

The ledger, the code pools, the activities' attendance and the rules (cloud_bridge/sink.py
wires them) run after a batch is committed and acked. Run on the ingest thread, a burst
of check-ins (every member's news to every door of the store) would hold back the next
batch's commit and ack, and with them every kiosk's outbox. Here the ingest thread hands
each committed batch over and goes on; this thread runs the hooks in commit order, and
takes whatever batches have queued up as one (the ledger counts a bigger batch for
little more than a small one), so under load it catches up instead of falling behind.

The hand-over is bounded (`max_events` waiting): past that the ingest thread waits, so
a database too slow for the hooks slows the intake instead of filling memory. What the
hooks never got to (a crash) is found again by the periodic catch-up (runtime.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from o2o_protocol.messages import Event

log = logging.getLogger(__name__)

#: An after-stored hook: the events of a batch, and the ids that were new in it.
AfterStored = Callable[[list[Event], set[str]], None]

#: How many events one run of the hooks takes at most (queued batches are joined up to it).
JOIN_EVENTS = 5000


class HookRunner:
    """Runs `hooks` on committed batches, in order, on its own thread."""

    def __init__(
        self,
        hooks: Sequence[AfterStored],
        *,
        max_events: int = 20_000,
        name: str = "bridge-after-commit",
        then: Callable[[], None] | None = None,
    ) -> None:
        """`then`: called after each run of the hooks (fresh figures: the ledger's part of
        them, such as overdrawn members, is only known once the hooks have run)."""
        self.hooks = list(hooks)
        self.then = then
        self.max_events = max_events
        self._name = name
        self._batches: deque[tuple[list[Event], set[str], float]] = deque()
        self._waiting = 0  # events queued, not yet taken by the thread
        self._cond = threading.Condition()
        self._stopping = False
        self._busy_since: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def hand_over(self, events: list[Event], new: set[str]) -> None:
        """Queue a committed batch (waits while `max_events` are already waiting)."""
        if not self.hooks or not events:
            return
        with self._cond:
            while self._waiting >= self.max_events and not self._stopping:
                self._cond.wait(0.5)
            self._batches.append((events, new, time.monotonic()))
            self._waiting += len(events)
            self._cond.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Run what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("after-commit work did not finish within %.0fs", timeout)

    def health(self) -> dict[str, float | int | None]:
        """Events waiting for the hooks, and the age of the oldest (seconds, or None)."""
        with self._cond:
            queued = self._batches[0][2] if self._batches else None
            times = [t for t in (self._busy_since, queued) if t is not None]
            oldest = min(times) if times else None
            return {
                "after_commit_waiting": self._waiting,
                "after_commit_oldest_s": None if oldest is None else time.monotonic() - oldest,
            }

    def _take(self) -> tuple[list[Event], set[str]] | None:
        with self._cond:
            while not self._batches:
                if self._stopping:
                    return None
                self._cond.wait()
            events: list[Event] = []
            new: set[str] = set()
            ids: set[str] = set()
            self._busy_since = self._batches[0][2]
            while self._batches and (not events or len(events) < JOIN_EVENTS):
                batch, fresh, _ = self._batches.popleft()
                self._waiting -= len(batch)
                new |= fresh
                for e in batch:  # a re-sent event in a later batch is the same event
                    if e.id not in ids:
                        ids.add(e.id)
                        events.append(e)
            self._cond.notify_all()
            return events, new

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            events, new = taken
            for hook in self.hooks:
                try:
                    hook(events, new)
                except Exception:
                    log.exception("%s failed", getattr(hook, "__qualname__", hook))
            if self.then is not None:
                try:
                    self.then()
                except Exception:
                    log.exception("after the after-commit work")
            with self._cond:
                self._busy_since = None
