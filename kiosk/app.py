"""The kiosk application object: wires the store, the decisions, devices and sync.

Screens and the headless runner both talk to `Kiosk` only; it owns no widgets and no
camera, so the same path from scanned text to durable outcome serves both. Every method
that touches the disk or a locker blocks: call them off the UI thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kiosk import __version__
from kiosk.config import KioskConfig
from kiosk.decisions import (
    Decision,
    Facts,
    PreorderChange,
    QuietWindow,
    Rules,
    after_unlock,
    decide,
    decide_join,
    loaded,
    normalise_phone,
    phone_hash,
    pickup_completed,
)
from kiosk.devices.lockers import LockerBank, LockerError
from kiosk.devices.printer import PrinterWorker, ReceiptPrinter
from kiosk.receipts import receipt_for
from kiosk.store import KioskStore, Recorded, StoreError
from kiosk.sync import Sync
from o2o_protocol.codes import CodeType, Rejected, verify_code
from o2o_protocol.messages import (
    Command,
    CommandName,
    EventType,
    LockerOpen,
    ProtocolError,
    command_data,
    new_event_id,
)
from o2o_protocol.timeutil import local_day

log = logging.getLogger(__name__)

Listener = Callable[[Recorded], None]
#: How long a door may stay open after a pickup or a load before the owner hears of it.
DOOR_LEFT_OPEN_S = 300.0
#: How long a door that the sensor could not confirm open may take to show it did.
UNCONFIRMED_OPEN_S = 30.0


@dataclass(frozen=True)
class Opening:
    """A locker was opened for staff to load an order; `locker.loaded` follows on close."""

    locker: int
    order: str


class Kiosk:
    """One kiosk: `handle_scan(text)` turns a scanned text into a recorded outcome."""

    def __init__(
        self,
        cfg: KioskConfig,
        *,
        store: KioskStore | None = None,
        sync: Sync | None = None,
        lockers: LockerBank | None = None,
        printer: ReceiptPrinter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.keys = cfg.public_keys()
        r = cfg.rules
        self.rules = Rules(
            points_per_visit=r.points_per_visit,
            once_per_day=r.once_per_day,
            reservation_early_min=r.reservation_early_min,
            reservation_late_min=r.reservation_late_min,
            accept=frozenset(CodeType(t) for t in r.accept),
            checkin_cooldown_min=r.checkin_cooldown_min,
        )
        self.lockers = lockers or LockerBank.from_config(cfg.lockers)
        self.lockers.on_fault = self._locker_fault
        self.store = store or KioskStore(
            cfg.data_dir,
            store=cfg.store,
            kiosk=cfg.kiosk,
            lockers=[(locker.number, locker.size) for locker in self.lockers],
            history_days=r.history_days,
        )
        self.printer = PrinterWorker(
            printer or ReceiptPrinter.from_config(cfg.printer), on_fault=self._printer_fault
        )
        self._telemetry: dict[str, Callable[[], Any]] = {
            "lockers": self.lockers.status,
            "printer": lambda: self.printer.status,
        }
        self.sync = sync or Sync(
            cfg.mqtt,
            self.store,
            version=__version__,
            telemetry=self.telemetry,
            on_command=self._command,
        )
        self.quiet = QuietWindow(r.quiet_window_s)
        self._listeners: list[Listener] = []
        self._staff_until = 0.0
        self._watchers: list[threading.Thread] = []
        # Shared by the scan worker and the door watchers: guarded by `_state`.
        self._state = threading.Lock()
        self._reserved: set[int] = set()
        self._loading: dict[str, int] = {}  # order -> locker, while staff have it open
        self._watching: set[int] = set()  # doors with an outcome waiting for them to shut
        self._closing = threading.Event()
        self._started = False

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.printer.start()
        self.sync.start()
        self._started = True
        self._recover()

    def stop(self) -> None:
        self._closing.set()
        if self._started:
            self.sync.stop()
            self.printer.stop()
        self.lockers.close()
        self.store.close()

    def add_listener(self, listener: Listener) -> None:
        """Called (from any thread) after every outcome is on disk."""
        self._listeners.append(listener)

    def add_telemetry(self, key: str, source: Callable[[], Any]) -> None:
        """A value for the retained MQTT status (e.g. `camera` state)."""
        self._telemetry[key] = source

    def telemetry(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, source in self._telemetry.items():
            try:
                out[key] = source()
            except Exception as exc:  # telemetry never breaks the status message
                out[key] = f"error: {exc}"
        return out

    def wait_idle(self, timeout: float) -> bool:
        """Wait for open doors to close (their outcomes recorded); False on timeout."""
        deadline = time.monotonic() + timeout
        for watcher in list(self._watchers):
            watcher.join(max(0.0, deadline - time.monotonic()))
        return not any(w.is_alive() for w in self._watchers)

    # --- customers and staff ---------------------------------------------------------

    def seen(self, text: str, t: float) -> bool:
        """True when this text is a new scan (not the same code still held up)."""
        return self.quiet.is_new(text, t)

    def staff_active(self) -> bool:
        return self.clock() < self._staff_until

    def staff_logout(self) -> None:
        """Leave staff mode now, so the next pickup code is a customer's, not a load."""
        self._staff_until = 0.0

    def handle_scan(self, text: str) -> Recorded | Opening:
        """Verify, decide, open a locker if needed, record durably. Returns once on disk."""
        now = self.clock()
        staff = self.staff_active()
        result = verify_code(text, self.keys, store=self.cfg.store, now=now)
        if isinstance(result, Rejected):
            facts = Facts()
        else:
            facts = self.store.facts_for(result, staff=staff)
            if staff and result.type is CodeType.PICKUP:
                with self._state:
                    held = self._loading.get(result.payload.o or "")
                if held is not None:  # shown again while its locker is still open
                    return Opening(held, result.payload.o or "")
            if facts.free_lockers:
                # Empty in the store is not enough: the door must be shut, fault-free and
                # not already open for another load.
                with self._state:
                    reserved = set(self._reserved)
                usable = {locker.number for locker in self.lockers.free()} - reserved
                free = tuple(f for f in facts.free_lockers if f[0] in usable)
                facts = dataclasses.replace(facts, free_lockers=free)
        decision = decide(
            result, facts, self.rules, now=now, today=local_day(now), text=text, staff=staff
        )
        if decision.needs_unlock:
            if decision.purpose == "load" and decision.open_locker is not None:
                with self._state:
                    self._reserved.add(decision.open_locker)
                    self._loading[str(decision.data["order"])] = decision.open_locker
            return self._unlock(decision)
        recorded = self.record(decision)
        if decision.event_type is EventType.STAFF_LOGIN:
            self._staff_until = now + self.cfg.rules.staff_session_s
        return recorded

    def join(self, phone: str) -> Recorded | None:
        """A new member from a phone number typed at the kiosk; None if it is no number."""
        number = normalise_phone(phone)
        if number is None:
            return None
        secret = self.cfg.phone_secret()
        known = self.store.member_by_phone(phone_hash(number, secret))
        decision = decide_join(
            number,
            secret=secret,
            member_id=known or new_event_id(),
            join_url=self.cfg.ui.join_url,
            known=known is not None,
        )
        return None if decision is None else self.record(decision)

    def staff_open(self, number: int, *, source: str = "staff") -> Recorded:
        """Open a locker on a staff member's (or the owner's remote) say-so, and log it."""
        result = self.lockers.unlock(number, force=True)
        data = {
            "action": "locker.open",
            "locker": number,
            "source": source,
            "opened": result.opened,
            "order": self.store.locker_orders().get(number),
        }
        if result.reason:
            data["reason"] = result.reason
        return self.record(Decision(EventType.STAFF_ACTION, data))

    def record(self, decision: Decision) -> Recorded:
        recorded = self.store.record(decision, self.clock())
        self.sync.notify()
        reason = f" ({decision.reason.value})" if decision.reason else ""
        log.info("%s%s (event %s)", decision.event_type.value, reason, recorded.event.id)
        for listener in self._listeners:
            try:
                listener(recorded)
            except Exception:
                log.exception("outcome listener failed")
        self._print(recorded)
        return recorded

    def _print(self, recorded: Recorded) -> None:
        """Receipts only for outcomes already on disk; a printer fault never stops a scan."""
        if self.cfg.printer.type == "none" or not self.printer.running:
            return
        event = recorded.event
        receipt = receipt_for(
            event.type,
            event.data,
            language=self.cfg.ui.language,
            ts=event.ts,
            next_visit_url=self.cfg.printer.next_visit_url or None,
        )
        if receipt is not None:
            self.printer.submit(receipt)

    def _printer_fault(self, kind: str, detail: str) -> None:
        self.record(Decision(EventType.PRINTER_FAULT, {"fault": kind, "detail": detail}))

    # --- lockers ---------------------------------------------------------------------

    def _unlock(self, intent: Decision) -> Recorded | Opening:
        assert intent.open_locker is not None
        number, order = intent.open_locker, str(intent.data["order"])
        if intent.purpose == "load":
            try:
                self.store.begin_load(order, number)
            except StoreError:
                self._release(number)
                raise
        try:
            result = self.lockers.unlock(number)
            opened, reason = result.opened, result.reason
        except LockerError as exc:  # a locker the store knows but the bank lost
            log.error("locker %d cannot be opened: %s", number, exc)
            opened, reason = False, "locker_missing"
        outcome = after_unlock(intent, opened, reason)
        if intent.purpose == "load":
            if not opened:
                try:
                    return self.record(outcome)
                finally:
                    self._release(number)
            # A door never seen open took nothing in: the order waits for a locker again.
            unseen = Decision(
                EventType.LOCKER_FAULT,
                {"locker": number, "order": order, "fault": "not_seen_open"},
                preorder=PreorderChange(order, "pending", None),
            )
            self._watch_door(
                number,
                lambda: self.record(loaded(intent)),
                unseen=unseen,
                seen_open=reason is None,
                release=number,
            )
            return Opening(number, order)
        recorded = self.record(outcome)
        if opened:
            unseen = Decision(  # the order stays ready: the goods never left the locker
                EventType.LOCKER_FAULT,
                {"locker": number, "order": order, "fault": "not_seen_open"},
            )
            self._watch_door(
                number, self._completer(order, number), unseen=unseen, seen_open=reason is None
            )
        return recorded

    def _release(self, number: int) -> None:
        with self._state:
            self._reserved.discard(number)
            for order in [o for o, n in self._loading.items() if n == number]:
                del self._loading[order]

    def _watch_door(
        self,
        number: int,
        on_closed: Callable[[], object],
        *,
        seen_open: bool,
        unseen: Decision | None = None,
        release: int | None = None,
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
                    self._record_retrying(unseen)
            elif not self.lockers.wait_closed(number, DOOR_LEFT_OPEN_S):
                self._record_retrying(
                    Decision(EventType.LOCKER_FAULT, {"locker": number, "fault": "left_open"})
                )
                while not self._closing.is_set():
                    if self.lockers.wait_closed(number, 1.0):
                        self._retrying(on_closed)
                        break
            else:
                self._retrying(on_closed)

        def watch_once() -> None:
            try:
                watch()
            except Exception:
                if not self._closing.is_set():  # at shutdown the lockers close under it
                    log.exception("door %d watch failed", number)
            finally:
                with self._state:
                    self._watching.discard(number)
                if release is not None:
                    self._release(release)

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

    def _record_retrying(self, decision: Decision) -> None:
        self._retrying(lambda: self.record(decision))

    def _retrying(self, write: Callable[[], object]) -> None:
        """A door outcome is written even if the disk is briefly full."""
        delay = 0.5
        while True:
            try:
                write()
                return
            except StoreError as exc:
                if self._closing.is_set():
                    log.error("door outcome lost at shutdown: %s", exc)
                    return
                log.error("door outcome not recorded: %s; retrying in %.0f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _recover(self) -> None:
        """Finish what a restart interrupted: pickups and loads whose watcher was lost.

        A pickup counts only if its door was seen open (status `opened`); a load whose door
        is shut again is loaded. A door still open is watched as usual.
        """
        for pre in [*self.store.preorders("opened"), *self.store.preorders("loading")]:
            if pre.locker is None:
                continue
            locker = pre.locker
            if pre.status == "opened":
                finish = self._completer(pre.order, locker)
            else:
                intent = Decision(
                    EventType.LOCKER_LOADED,
                    {"order": pre.order, "locker": locker, "size": pre.size},
                    open_locker=locker,
                    purpose="load",
                )
                finish = self._loader(intent)
            try:
                still_open = self.lockers.is_open(locker)
            except LockerError:
                still_open = False
            if still_open:
                self._watch_door(locker, finish, seen_open=True)
            else:
                finish()

    def _loader(self, intent: Decision) -> Callable[[], object]:
        return lambda: self.record(loaded(intent))

    def _completer(self, order: str, locker: int) -> Callable[[], object]:
        return lambda: self.record(pickup_completed(order, locker))

    def _locker_fault(self, number: int, kind: str, detail: str) -> None:
        try:
            self.record(
                Decision(
                    EventType.LOCKER_FAULT, {"locker": number, "fault": kind, "detail": detail}
                )
            )
        except StoreError as exc:
            log.error("locker %d %s not recorded: %s", number, kind, exc)

    # --- commands from the bridge (sync's worker thread) -----------------------------

    def _command(self, cmd: Command) -> None:
        if cmd.name != CommandName.LOCKER_OPEN:
            return
        try:
            data = command_data(cmd.name, cmd.data)
        except ProtocolError as exc:
            log.warning("locker.open (seq %d) refused: %s", cmd.seq, exc)
            return
        assert isinstance(data, LockerOpen)
        if data.expires is not None and data.expires < self.clock():
            log.warning(
                "locker.open (seq %d) for locker %d expired; not opened", cmd.seq, data.locker
            )
            return
        try:
            self.staff_open(data.locker, source=f"remote:{data.by}")
        except (LockerError, StoreError) as exc:
            log.warning("locker.open (seq %d) failed: %s", cmd.seq, exc)
