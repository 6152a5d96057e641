"""The locker coordinator: the pickup and loading door flows, on top of the locker bank.

It owns what the doors are doing for the kiosk: which lockers are reserved for a load
in progress, which doors have an outcome waiting for them to shut (one watch thread per
door), what a restart interrupted, and the staff's and the owner's own opens. Outcomes
are decided in `kiosk.decisions` and written through the `Recorder`.

Hardware waits (a pulse, a door timeout) never run on the sync thread: a remote
`locker.open` is queued here and run by this coordinator's own device thread. The
command left a durable `RemoteOpenQueued` behind (`kiosk.commands`), settled in the same
write as the `staff.action` that logs the pulse, so `recover()` runs one that a restart
or a power cut interrupted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kiosk.decisions import (
    Decision,
    Unlock,
    after_unlock,
    door_left_open,
    door_not_seen_open,
    load_intent,
    loaded,
    locker_fault,
    pickup_completed,
    remote_open_expired,
    staff_opened,
)
from kiosk.devices.lockers import LockerBank, LockerError
from kiosk.effects import RemoteOpenQueued, RemoteOpenSettled
from kiosk.localdb import DBError, KioskDB, Recorded
from kiosk.recorder import Recorder
from o2o_protocol.messages import Command, CommandName

log = logging.getLogger(__name__)

#: How long a door may stay open after a pickup or a load before the owner hears of it.
DOOR_LEFT_OPEN_S = 300.0
#: How long a door that the sensor could not confirm open may take to show it did.
UNCONFIRMED_OPEN_S = 30.0


@dataclass(frozen=True)
class Opening:
    """A locker was opened for staff to load an order; `locker.loaded` follows on close."""

    locker: int
    order: str


class LockerCoordinator:
    """Door flows for one kiosk. Every verb may block on a relay: call it off the UI."""

    def __init__(
        self,
        lockers: LockerBank,
        db: KioskDB,
        recorder: Recorder,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lockers = lockers
        self.db = db
        self.recorder = recorder
        self.clock = clock
        # Shared by the scan worker, the device thread and the door watchers.
        self._state = threading.Lock()
        self._reserved: set[int] = set()
        self._loading: dict[str, int] = {}  # order -> locker, while staff have it open
        self._watching: set[int] = set()  # doors with an outcome waiting for them to shut
        self._watchers: list[threading.Thread] = []
        self._remote: queue.Queue[RemoteOpenQueued | None] = queue.Queue()
        self._queued: set[int] = set()  # command seqs on the queue (guarded by `_state`)
        self._device = threading.Thread(target=self._run_remote, name="locker-remote", daemon=True)
        self._closing = recorder.closing

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the device thread that runs remote opens."""
        if not self._device.is_alive():
            self._device.start()

    def stop(self) -> None:
        """Stop taking remote opens; door watches end quietly once the bank closes."""
        self._closing.set()
        if self._device.is_alive():
            self._remote.put(None)
            self._device.join(10)

    def wait_idle(self, timeout: float) -> bool:
        """Wait for open doors to close (their outcomes recorded); False on timeout."""
        deadline = time.monotonic() + timeout
        for watcher in list(self._watchers):
            watcher.join(max(0.0, deadline - time.monotonic()))
        return not any(w.is_alive() for w in self._watchers)

    # --- what the scan service asks ----------------------------------------------------

    def loading(self, order: str) -> Opening | None:
        """The locker staff still have open for `order`, if it is being loaded now."""
        with self._state:
            held = self._loading.get(order)
        return None if held is None else Opening(held, order)

    def usable(self, free: tuple[tuple[int, str], ...]) -> tuple[tuple[int, str], ...]:
        """Of the lockers empty in the database, those a load may use now: the door shut,
        fault-free, and not already open for another load."""
        with self._state:
            reserved = set(self._reserved)
        usable = {locker.number for locker in self.lockers.free()} - reserved
        return tuple(f for f in free if f[0] in usable)

    def open_for(self, intent: Unlock) -> Recorded | Opening:
        """Pulse the locker of a pickup or a load and record what the door did."""
        number, order = intent.locker, intent.order
        if intent.purpose == "load":
            with self._state:
                self._reserved.add(number)
                self._loading[order] = number
            try:
                self.db.begin_load(order, number)
            except DBError:
                self._release(number)
                raise
        try:
            result = self.lockers.unlock(number)
            opened, reason = result.opened, result.reason
        except LockerError as exc:  # a locker the database knows but the bank lost
            log.error("locker %d cannot be opened: %s", number, exc)
            opened, reason = False, "locker_missing"
        outcome = after_unlock(intent, opened, reason)
        if outcome is None:  # a load whose door opened: recorded when it shuts
            self._watch_door(
                number,
                loaded(intent),
                unseen=door_not_seen_open(intent),
                seen_open=reason is None,
                release=True,
            )
            return Opening(number, order)
        if intent.purpose == "load":
            try:
                return self.recorder.record(outcome)
            finally:
                self._release(number)
        recorded = self.recorder.record(outcome)
        if opened:
            self._watch_door(
                number,
                pickup_completed(order, number),
                unseen=door_not_seen_open(intent),
                seen_open=reason is None,
            )
        return recorded

    # --- staff and the owner ---------------------------------------------------------

    def staff_open(
        self, number: int, *, source: str = "staff", settles: int | None = None
    ) -> Recorded:
        """Open a locker on a staff member's (or the owner's remote) say-so, and log it."""
        result = self.lockers.unlock(number, force=True)
        order = self.db.locker_orders().get(number)
        decision = staff_opened(
            number,
            source=source,
            opened=result.opened,
            reason=result.reason,
            order=order,
            settles=settles,
        )
        return self.recorder.record(decision)

    def on_command(self, cmd: Command) -> None:
        """Sync's command callback, after the command's changes are on disk: a
        `locker.open` goes to the device thread, so the sync thread returns at once."""
        if cmd.name != CommandName.LOCKER_OPEN:
            return
        for pending in self.db.remote_opens():
            if pending.seq == cmd.seq:
                self._queue_remote(pending)

    def _queue_remote(self, pending: RemoteOpenQueued) -> None:
        with self._state:
            if pending.seq in self._queued:
                return
            self._queued.add(pending.seq)
        self._remote.put(pending)

    def wait_remote(self, timeout: float) -> bool:
        """Wait until every queued remote open has run (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._remote.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _run_remote(self) -> None:
        while (pending := self._remote.get()) is not None:
            try:
                self._open_remote(pending)
            finally:
                with self._state:
                    self._queued.discard(pending.seq)
                self._remote.task_done()
        self._remote.task_done()

    def _open_remote(self, pending: RemoteOpenQueued) -> None:
        """Run one remote open now, unless it has expired; settle it either way, except
        when the database cannot take the write (it runs again after a restart)."""
        number, seq = pending.locker, pending.seq
        try:
            if remote_open_expired(pending.expires, self.clock()):
                log.warning("locker.open (seq %d) for locker %d expired; not opened", seq, number)
            else:
                self.staff_open(number, source=f"remote:{pending.by}", settles=seq)
                return
        except DBError as exc:
            log.error("locker.open (seq %d) for locker %d not recorded: %s", seq, number, exc)
            return
        except LockerError as exc:
            log.warning("locker.open (seq %d) for locker %d failed: %s", seq, number, exc)
        except Exception:
            log.exception("locker.open (seq %d) for locker %d failed", seq, number)
        try:
            self.db.apply_changes([RemoteOpenSettled(seq)], self.clock())
        except DBError as exc:
            log.error("locker.open (seq %d) not settled: %s", seq, exc)

    # --- faults the bank reports by itself (GPIO callback thread) ------------------------

    def on_fault(self, number: int, kind: str, detail: str) -> None:
        try:
            self.recorder.record(locker_fault(number, kind, detail))
        except DBError as exc:
            log.error("locker %d %s not recorded: %s", number, kind, exc)

    # --- after a restart ---------------------------------------------------------------

    def recover(self) -> None:
        """Finish what a restart interrupted: pickups and loads whose watcher was lost.

        A pickup counts only if its door was seen open (status `opened`); a load whose door
        is shut again is loaded. A door still open is watched as usual. Remote opens the
        bridge asked for that never ran go to the device thread again (expired ones
        are dropped there).
        """
        for pending in self.db.remote_opens():
            self._queue_remote(pending)
        for pre in [*self.db.preorders("opened"), *self.db.preorders("loading")]:
            if pre.locker is None:
                continue
            locker = pre.locker
            if pre.status == "opened":
                finish = pickup_completed(pre.order, locker)
            else:
                finish = loaded(load_intent(pre.order, locker, pre.size))
            try:
                still_open = self.lockers.is_open(locker)
            except LockerError:
                still_open = False
            if still_open:
                self._watch_door(locker, finish, seen_open=True)
            else:
                self.recorder.record(finish)

    # --- door watches ------------------------------------------------------------------

    def _release(self, number: int) -> None:
        with self._state:
            self._reserved.discard(number)
            for order in [o for o, n in self._loading.items() if n == number]:
                del self._loading[order]

    def _watch_door(
        self,
        number: int,
        on_closed: Decision,
        *,
        seen_open: bool,
        unseen: Decision | None = None,
        release: bool = False,
    ) -> None:
        """Record what the door does next: opened and shut again completes the action.

        A door is only taken as used once it was seen open and then shut. An unlock the
        sensor could not confirm (a jammed latch, a broken switch) may never open it: the
        order then stays where it is and the owner hears of it (`unseen`), rather than the
        order being marked picked up with the goods still locked inside. A door left open
        is reported, and still completes whenever it is shut. One watch per door.
        """
        with self._state:
            if number in self._watching:
                return  # shown again while still open: the running watch will finish it
            self._watching.add(number)

        def watch() -> None:
            if not seen_open and not self._wait_open(number, UNCONFIRMED_OPEN_S):
                if unseen is not None:
                    self.recorder.record_retrying(unseen)
            elif not self.lockers.wait_closed(number, DOOR_LEFT_OPEN_S):
                self.recorder.record_retrying(door_left_open(number))
                while not self._closing.is_set():
                    if self.lockers.wait_closed(number, 1.0):
                        self.recorder.record_retrying(on_closed)
                        break
            else:
                self.recorder.record_retrying(on_closed)

        def watch_once() -> None:
            try:
                watch()
            except Exception:
                if not self._closing.is_set():  # at shutdown the lockers close under it
                    log.exception("door %d watch failed", number)
            finally:
                with self._state:
                    self._watching.discard(number)
                if release:
                    self._release(number)

        thread = threading.Thread(target=watch_once, name=f"door-{number}", daemon=True)
        self._watchers = [w for w in self._watchers if w.is_alive()] + [thread]
        thread.start()

    def _wait_open(self, number: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.lockers.is_open(number):
            if time.monotonic() > deadline or self._closing.is_set():
                return False
            time.sleep(0.05)
        return True
