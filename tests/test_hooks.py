"""What follows a commit runs on its own thread (cloud_bridge/hooks.py): the ingest never
waits for the ledger, the hooks still see every batch once and in order, and a backlog
is bounded."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from cloud_bridge.hooks import HookRunner
from o2o_protocol.messages import Event
from o2o_protocol.timeutil import rfc3339


def ev(n: int) -> Event:
    return Event(
        id=str(uuid.uuid4()), seq=n + 1, type="checkin", ts=rfc3339(time.time()),
        store="s1", kiosk="k1", data={"n": n},
    )  # fmt: skip


def until(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


class Blocking:
    """A hook that waits for `release` on its first call; records what it saw."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[list[int], set[str]]] = []

    def __call__(self, events: list[Event], new: set[str]) -> None:
        self.entered.set()
        self.release.wait(10)
        self.calls.append(([e.data["n"] for e in events], new))


def test_a_slow_hook_does_not_hold_back_the_ingest() -> None:
    hook = Blocking()
    runner = HookRunner([hook])
    runner.start()
    try:
        first = [ev(1)]
        runner.hand_over(first, {first[0].id})
        assert hook.entered.wait(5)
        for n in range(2, 6):  # the ingest goes on while the hook is busy
            e = ev(n)
            runner.hand_over([e], {e.id})
        assert hook.calls == []  # all four handed over while the first run still waits
        assert runner.health()["after_commit_waiting"] == 4
        hook.release.set()
        until(lambda: sum(len(c[0]) for c in hook.calls) == 5)
        # The four that queued up meanwhile came as one run, in commit order.
        assert [c[0] for c in hook.calls] == [[1], [2, 3, 4, 5]]
        until(lambda: runner.health() == {"after_commit_waiting": 0, "after_commit_oldest_s": None})
    finally:
        hook.release.set()
        runner.stop()


def test_a_resent_event_in_a_later_batch_is_seen_once() -> None:
    hook = Blocking()
    runner = HookRunner([hook])
    runner.start()
    try:
        a, b = ev(1), ev(2)
        runner.hand_over([ev(0)], set())
        assert hook.entered.wait(5)
        runner.hand_over([a, b], {a.id, b.id})
        runner.hand_over([a], set())  # the kiosk sent `a` again: stored once, acked again
        hook.release.set()
        until(lambda: len(hook.calls) == 2)
        assert hook.calls[1] == ([1, 2], {a.id, b.id})
    finally:
        hook.release.set()
        runner.stop()


def test_stop_runs_what_is_queued_and_a_failing_hook_spoils_nothing_else() -> None:
    seen: list[int] = []

    def failing(events: list[Event], new: set[str]) -> None:
        raise RuntimeError("database went away")

    def counting(events: list[Event], new: set[str]) -> None:
        seen.extend(e.data["n"] for e in events)

    runner = HookRunner([failing, counting])
    runner.start()
    for n in range(50):
        e = ev(n)
        runner.hand_over([e], {e.id})
    runner.stop()
    assert seen == list(range(50))


def test_a_backlog_past_its_bound_makes_the_ingest_wait() -> None:
    hook = Blocking()
    runner = HookRunner([hook], max_events=3)
    runner.start()
    try:
        runner.hand_over([ev(0)], set())
        assert hook.entered.wait(5)
        runner.hand_over([ev(1), ev(2), ev(3)], set())  # 3 waiting: the bound
        handed = threading.Event()

        def ingest() -> None:
            runner.hand_over([ev(4)], set())
            handed.set()

        threading.Thread(target=ingest, daemon=True).start()
        assert not handed.wait(0.5)  # held back while the hooks are behind
        hook.release.set()
        assert handed.wait(5)
    finally:
        hook.release.set()
        runner.stop()
