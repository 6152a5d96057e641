"""The kiosk runtime: the wiring root that builds every part from the config.

Like Frigate's app object: `init_*` build the parts (local database, lockers, printer
and its worker, recorder, locker coordinator, scan service, sync), `start()` starts
them in order and `stop()` stops them in reverse. Runners (`kiosk.headless`,
`kiosk.ui`) and the scan pipeline talk to it through verbs only; tests may reach the
parts through its attributes. Every verb that touches the disk or a locker blocks:
call it off the UI thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiosk import __version__
from kiosk.config import KioskConfig, UiSection
from kiosk.decisions import Preorder, Rules, printer_fault
from kiosk.devices.lockers import LockerBank
from kiosk.devices.printer import ReceiptPrinter
from kiosk.devices.printer_worker import PrinterWorker
from kiosk.factories import lockers_from_config, printer_from_config
from kiosk.localdb import KioskDB, Recorded
from kiosk.lockerflows import LockerCoordinator, Opening
from kiosk.loyalty import MemberOffer, RatingSubject
from kiosk.recorder import REPRINT_SEARCH, Listener, Receipts, Recorder
from kiosk.scanning import ScanService, ScanSettings
from kiosk.sync import Sync
from o2o_protocol.codes import CodeType
from o2o_protocol.hours import shop_zone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KioskState:
    """One look at the kiosk for the staff screen (plain data, read off the UI thread)."""

    staff_active: bool
    pending: list[Preorder] = field(default_factory=list)
    locker_orders: dict[int, str | None] = field(default_factory=dict)
    lockers: dict[str, Any] = field(default_factory=dict)
    printer: str = "unknown"
    outbox: int = 0
    online: bool = False


def rules_from_config(cfg: KioskConfig) -> Rules:
    r = cfg.rules
    return Rules(
        points_per_visit=r.points_per_visit,
        once_per_day=r.once_per_day,
        reservation_early_min=r.reservation_early_min,
        reservation_late_min=r.reservation_late_min,
        accept=frozenset(CodeType(t) for t in r.accept),
        checkin_cooldown_min=r.checkin_cooldown_min,
        # None: the machine's zone, read at each scan (it follows daylight saving).
        zone=shop_zone(cfg.timezone) if cfg.timezone else None,
    )


class KioskRuntime:
    """One kiosk, built from its config; parts may be injected (tests, benchmarks)."""

    def __init__(
        self,
        cfg: KioskConfig,
        *,
        db: KioskDB | None = None,
        sync: Sync | None = None,
        lockers: LockerBank | None = None,
        printer: ReceiptPrinter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self._telemetry: dict[str, Callable[[], Any]] = {}
        self._stops: list[Callable[[], object]] = []
        self.init_lockers(lockers)
        try:
            self.init_db(db)
        except BaseException:
            self.lockers.close()
            raise
        self.init_printer(printer)
        self.init_recorder()
        self.init_doors()
        self.init_scans()
        self.init_sync(sync)

    # --- building the parts ----------------------------------------------------------

    def init_lockers(self, lockers: LockerBank | None) -> None:
        self.lockers = lockers or lockers_from_config(self.cfg.lockers)
        self._telemetry["lockers"] = self.lockers.status

    def init_db(self, db: KioskDB | None) -> None:
        cfg = self.cfg
        self.db = db or KioskDB(
            cfg.data_dir,
            store=cfg.store,
            kiosk=cfg.kiosk,
            lockers=[(locker.number, locker.size) for locker in self.lockers],
            history_days=cfg.rules.history_days,
            clock=self.clock,
        )

    def init_printer(self, printer: ReceiptPrinter | None) -> None:
        self.printer = PrinterWorker(
            printer or printer_from_config(self.cfg.printer), on_fault=self._printer_fault
        )
        self._telemetry["printer"] = lambda: self.printer.status

    def init_recorder(self) -> None:
        self.receipts = Receipts(
            self.printer,
            language=self.cfg.ui.language,
            next_visit_url=self.cfg.printer.next_visit_url,
            enabled=self.cfg.printer.type != "none",
            join_url=self.cfg.ui.join_url,
        )
        self.recorder = Recorder(
            self.db, notify=self._wake_sync, receipts=self.receipts, clock=self.clock
        )

    def init_doors(self) -> None:
        self.doors = LockerCoordinator(self.lockers, self.db, self.recorder, clock=self.clock)
        self.lockers.on_fault = self.doors.on_fault

    def init_scans(self) -> None:
        cfg = self.cfg
        settings = ScanSettings(
            store=cfg.store,
            keys=cfg.public_keys(),
            rules=rules_from_config(cfg),
            staff_session_s=cfg.rules.staff_session_s,
            phone_secret=cfg.phone_secret(),
            join_url=cfg.ui.join_url,
        )
        self.scans = ScanService(settings, self.db, self.doors, self.recorder, clock=self.clock)

    def init_sync(self, sync: Sync | None) -> None:
        self.sync = sync or Sync(
            self.cfg.mqtt,
            self.db,
            version=__version__,
            telemetry=self.telemetry,
            on_command=self.doors.on_command,
        )

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Printer, then the doors (which finish what a restart left, remote opens
        included), then sync, whose commands the doors take from then on. A part that
        fails to start stops the ones started before it."""
        steps: list[tuple[Callable[[], object], Callable[[], object]]] = [
            (self.printer.start, self.printer.stop),
            (self._start_doors, self.doors.stop),
            (self.sync.start, self.sync.stop),
        ]
        for start, stop in steps:
            try:
                start()
            except BaseException:
                self.stop()
                raise
            self._stops.append(stop)

    def _start_doors(self) -> None:
        self.doors.start()
        self.doors.recover()

    def stop(self) -> None:
        """In reverse: sync, doors, printer; then the bank and the database close."""
        while self._stops:
            self._stops.pop()()
        self.doors.stop()  # door watches of a kiosk never started (tests) end too
        self.lockers.close()
        self.db.close()

    def _wake_sync(self) -> None:
        # Sync is built last (it needs the coordinator's command handler); an outcome
        # recorded before that (a locker fault while building) is sent once it starts.
        sync = getattr(self, "sync", None)
        if sync is not None:
            sync.notify()

    # --- telemetry and listeners -----------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Called (from any thread) after every outcome is on disk."""
        self.recorder.add_listener(listener)

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

    def _printer_fault(self, kind: str, detail: str) -> None:
        self.recorder.record(printer_fault(kind, detail))

    # --- verbs for the runners -------------------------------------------------------

    def scan(self, text: str) -> Recorded | Opening:
        return self.scans.scan(text)

    def join(self, phone: str, referrer: str | None = None) -> Recorded | None:
        """A new member from a typed phone number (None: not a number); `referrer`: the
        member whose share link brought them."""
        return self.scans.join(phone, referrer=referrer)

    def offer(self, member_id: str) -> MemberOffer:
        """The member's balance and the rewards they can take now (docs/members.md)."""
        return self.scans.offer(member_id)

    def redeem(self, member_id: str, reward_id: str) -> Recorded:
        """Spend points on a reward: `points.redeemed` recorded and the voucher printed,
        or `scan.rejected` (too few points, none left). Raises `DBError` if not written."""
        return self.scans.redeem(member_id, reward_id)

    def rate(self, subject: RatingSubject, rating: int) -> Recorded:
        """A 1-5 rating of a visit (ValueError outside that); a second one is refused."""
        return self.scans.rate(subject, rating)

    def staff_open(self, number: int) -> Recorded:
        return self.doors.staff_open(number)

    def staff_active(self) -> bool:
        return self.scans.staff_active()

    def staff_logout(self) -> None:
        self.scans.staff_logout()

    def state(self) -> KioskState:
        """Pending orders, lockers, printer, outbox and broker, for the staff screen."""
        return KioskState(
            staff_active=self.scans.staff_active(),
            pending=self.db.preorders("pending"),
            locker_orders=self.db.locker_orders(),
            lockers=self.lockers.status(),
            printer=str(self.printer.status),
            outbox=self.db.outbox_size(),
            online=self.sync.connected,
        )

    def reprint_last_receipt(self) -> str | None:
        """Print the newest receipt again (paper jam, customer lost it); its title."""
        return self.receipts.reprint_last(self.db.history(REPRINT_SEARCH))

    @property
    def quiet_window_s(self) -> float:
        """How long a code held in front of the camera stays one scan."""
        return self.cfg.rules.quiet_window_s

    @property
    def ui(self) -> UiSection:
        """What the screens show and how (language, join link, timeouts)."""
        return self.cfg.ui

    @property
    def label(self) -> str:
        """This kiosk as the staff see it: `store · kiosk`."""
        return f"{self.cfg.store} · {self.cfg.kiosk}"

    def outbox_size(self) -> int:
        return self.db.outbox_size()

    def wait_idle(self, timeout: float) -> bool:
        """Wait for open doors to close (their outcomes recorded); False on timeout."""
        return self.doors.wait_idle(timeout)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the bridge has acked every event; False on timeout."""
        return self.sync.wait_drained(timeout)
