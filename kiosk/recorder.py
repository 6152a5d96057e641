"""Recording an outcome: durable write, then sync, then listeners, then the receipt.

The order is the promise the kiosk makes: nothing is shown, sent or printed before it
is on disk, and a listener or a printer that fails never undoes or stops a record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kiosk.decisions import Decision
from kiosk.devices.printer_worker import PrinterWorker
from kiosk.localdb import DBError, KioskDB, Recorded
from kiosk.receipts import Receipt, receipt_for

log = logging.getLogger(__name__)

Listener = Callable[[Recorded], None]
#: How far back "reprint last receipt" looks for an event that printed something.
REPRINT_SEARCH = 50


class Receipts:
    """Receipts for recorded events, printed through the printer's worker thread."""

    def __init__(
        self,
        worker: PrinterWorker,
        *,
        language: str,
        next_visit_url: str | None,
        enabled: bool = True,
        join_url: str | None = None,
    ) -> None:
        self.worker = worker
        self.language = language
        self.next_visit_url = next_visit_url or None
        self.enabled = enabled
        #: The shop's sign-up page: member slips carry a share link built on it.
        self.join_url = join_url or None

    def _receipt(self, event_type: str, data: dict[str, Any], ts: str | None) -> Receipt | None:
        return receipt_for(
            event_type,
            data,
            language=self.language,
            ts=ts,
            next_visit_url=self.next_visit_url,
            join_url=self.join_url,
        )

    def print_for(self, recorded: Recorded) -> None:
        """Queue the slip an outcome prints, if any; never blocks, never raises."""
        if not self.enabled or not self.worker.running:
            return
        event = recorded.event
        receipt = self._receipt(event.type, event.data, event.ts)
        if receipt is not None:
            self.worker.submit(receipt)

    def reprint_last(self, history: list[dict[str, Any]]) -> str | None:
        """Print the newest slip of `history` (newest first) again; its title, or None."""
        for event in history:
            receipt = self._receipt(
                str(event.get("type", "")), event.get("data") or {}, event.get("ts")
            )
            if receipt is not None:
                return receipt.title if self.worker.submit(receipt) else None
        return None


class Recorder:
    """The one way an outcome gets recorded; thread-safe (the database has its lock)."""

    def __init__(
        self,
        db: KioskDB,
        *,
        notify: Callable[[], None],
        receipts: Receipts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.notify = notify
        self.receipts = receipts
        self.clock = clock
        self.closing = threading.Event()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Called (from any thread) after every outcome is on disk."""
        self._listeners.append(listener)

    def record(self, decision: Decision) -> Recorded:
        """Write durably (or raise `DBError`, nothing recorded), then tell everyone."""
        recorded = self.db.record(decision, self.clock())
        self.notify()
        reason = f" ({decision.reason.value})" if decision.reason else ""
        log.info("%s%s (event %s)", decision.event_type.value, reason, recorded.event.id)
        for listener in self._listeners:
            try:
                listener(recorded)
            except Exception:
                log.exception("outcome listener failed")
        if self.receipts is not None:
            self.receipts.print_for(recorded)
        return recorded

    def record_retrying(self, decision: Decision) -> None:
        """For outcomes nobody waits on (a door shut, a fault): written even if the disk
        is briefly full, retrying with backoff until `closing` is set."""
        delay = 0.5
        while True:
            try:
                self.record(decision)
                return
            except DBError as exc:
                if self.closing.is_set():
                    log.error("outcome lost at shutdown: %s", exc)
                    return
                log.error("outcome not recorded: %s; retrying in %.0f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
