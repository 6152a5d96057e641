"""The printer's own thread: the kiosk never waits for paper.

A queue of receipts in front of any `ReceiptPrinter`; faults come back through a
callback once per change of state, and the thread keeps running whatever the printer does.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable

from kiosk.devices.printer import FaultCallback, PrinterFault, ReceiptPrinter
from kiosk.receipts import Receipt

log = logging.getLogger(__name__)


class PrinterWorker:
    """Prints in its own thread so the UI never waits for paper.

    `submit` never blocks. Faults are reported through `on_fault(kind, detail)` once per
    change of state (not once per receipt); `on_status(status)` hears every change,
    recovery included. Between jobs the printer's status is polled every
    `poll_s` seconds, so paper-out shows up before a customer needs a receipt.
    """

    def __init__(
        self,
        printer: ReceiptPrinter,
        *,
        on_fault: FaultCallback | None = None,
        on_status: Callable[[str], None] | None = None,
        poll_s: float = 30.0,
        max_queue: int = 20,
    ) -> None:
        self.printer = printer
        self.on_fault = on_fault
        self.on_status = on_status
        self.poll_s = poll_s
        self._queue: queue.Queue[Receipt | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._status: str = "unknown"
        self._pending = 0
        self._done = threading.Condition()

    @property
    def status(self) -> str:
        """The last status seen (``unknown`` before the first job or poll)."""
        return self._status

    @property
    def running(self) -> bool:
        """Receipts are only queued while the worker runs (a stopped one would fill up)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> PrinterWorker:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="printer", daemon=True)
            self._thread.start()
        return self

    def submit(self, receipt: Receipt) -> bool:
        """Queue a receipt; False (and a log line) if the queue is full."""
        with self._done:
            try:
                self._queue.put_nowait(receipt)
            except queue.Full:
                log.warning("printer queue full: receipt %r dropped", receipt.title)
                return False
            self._pending += 1
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every queued receipt has been handled (for tests and shutdown)."""
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued receipts (up to `timeout`), then close the printer."""
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
            self._thread = None
        self.printer.close()

    def _run(self) -> None:
        poll = self.poll_s if self.poll_s > 0 else None
        if poll is not None:
            self._poll()  # know the state at start-up (and load escpos off the UI thread)
        while True:
            try:
                receipt = self._queue.get(timeout=poll)
            except queue.Empty:
                self._poll()
                continue
            if receipt is None:
                return
            try:
                self.printer.print_receipt(receipt)
            except PrinterFault as fault:
                self._report(fault.kind, fault.detail)
            except Exception as exc:  # a bug in a backend must not kill the printer thread
                log.exception("printing failed")
                self._report("error", repr(exc))
            else:
                self._report("ok", "")
            finally:
                with self._done:
                    self._pending -= 1
                    self._done.notify_all()

    def _poll(self) -> None:
        try:
            state = self.printer.status()
        except Exception as exc:
            log.exception("printer status failed")
            self._report("error", repr(exc))
            return
        self._report(state, f"status {state}" if state not in ("ok", "disabled") else "")

    def _report(self, state: str, detail: str) -> None:
        if state == self._status:
            return
        self._status = state
        if self.on_status is not None:
            _safe(self.on_status, state)
        if state in ("paper_out", "offline", "error"):
            log.warning("printer fault: %s %s", state, detail)
            if self.on_fault is not None:
                _safe(self.on_fault, state, detail)


def _safe(callback: Callable[..., None], *args: str) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("printer callback failed")
