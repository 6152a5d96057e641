"""Receipt printer: ESC/POS over a serial port (the Pi's UART or a USB serial printer).

python-escpos drives the port (pyserial) and builds the QR and cut commands. Text is
encoded here: escpos's automatic code-page switching knows no Chinese code pages (it only
special-cases CJK ideographs), so with a CJK code page (gb18030 by default) the printer is
put in its Chinese mode (FS &) and sent the encoded bytes as they are.

Status uses the real-time query DLE EOT n, which printers answer even while busy. escpos's
`paper_status` reads 16 bytes (so it always waits for the whole timeout) and calls a silent
printer "plenty of paper"; here one status byte is read with a short timeout and silence
means offline.

Printing can take a second or more and a printer can vanish at any time, so callers go
through `PrinterWorker`: a thread with a queue that reports faults through a callback
and keeps running.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal

from kiosk.config import PrinterSection
from kiosk.receipts import Receipt, render_text

log = logging.getLogger(__name__)

PrinterStatus = Literal["ok", "paper_out", "offline", "disabled"]
FaultKind = Literal["paper_out", "offline", "error"]
FaultCallback = Callable[[str, str], None]

ESC: Final = b"\x1b"
GS: Final = b"\x1d"
FS: Final = b"\x1c"
DLE_EOT: Final = b"\x10\x04"
#: FS & — enter the printer's Chinese (double-byte) character mode.
CJK_MODE_ON: Final = FS + b"&"
#: Code pages sent as double-byte text in the printer's Chinese/Kanji mode.
CJK_CODECS: Final = frozenset({"gb18030", "gbk", "gb2312", "big5", "big5hkscs", "shift_jis"})

# Real-time status bytes (DLE EOT n): bits 1 and 4 are always 1, bits 0 and 7 always 0.
_FIXED_MASK, _FIXED_BITS = 0x93, 0x12
_ONLINE_OFFLINE_BIT = 0x08  # n=1: printer is offline
_CAUSE_PAPER_END_STOP = 0x20  # n=2: printing stopped by paper end
_CAUSE_COVER_OPEN = 0x04  # n=2: cover open
_PAPER_END_BITS = 0x60  # n=4: roll paper end sensor


class PrinterFault(Exception):
    """A receipt could not be printed. `kind` is paper_out, offline or error."""

    def __init__(self, kind: FaultKind, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind: FaultKind = kind
        self.detail = detail


class ReceiptPrinter(ABC):
    """What the kiosk needs from a printer. Blocking: use it through `PrinterWorker`."""

    @classmethod
    def from_config(cls, cfg: PrinterSection) -> ReceiptPrinter:
        if cfg.type == "serial":
            return SerialPrinter(
                cfg.port,
                baudrate=cfg.baudrate,
                codepage=cfg.codepage,
                width=cfg.width,
                status_timeout_s=cfg.status_timeout_s,
            )
        if cfg.type == "simulated":
            return SimulatedPrinter(width=cfg.width)
        return NullPrinter()

    @abstractmethod
    def print_receipt(self, receipt: Receipt) -> None:
        """Print one receipt, or raise `PrinterFault`."""

    @abstractmethod
    def status(self) -> PrinterStatus:
        """ok, paper_out, offline (or disabled when there is no printer)."""

    def describe(self) -> str:
        return type(self).__name__

    def close(self) -> None:  # noqa: B027 (optional for backends that hold nothing)
        """Release the port."""


class NullPrinter(ReceiptPrinter):
    """``type = "none"``: the shop has no printer; receipts are skipped."""

    def print_receipt(self, receipt: Receipt) -> None:
        log.debug("no printer: skipped %r", receipt.title)

    def status(self) -> PrinterStatus:
        return "disabled"

    def describe(self) -> str:
        return "no printer"


class SimulatedPrinter(ReceiptPrinter):
    """Keeps printed receipts as text (and logs them) so the demo and tests can show them.

    Set `paper_out` or `offline` to play a fault.
    """

    def __init__(self, *, width: int = 32, keep: int = 100) -> None:
        self.width = width
        self.printed: deque[str] = deque(maxlen=keep)
        self.paper_out = False
        self.offline = False

    def print_receipt(self, receipt: Receipt) -> None:
        state = self.status()
        if state != "ok":
            raise PrinterFault(state if state != "disabled" else "error", "simulated")
        text = render_text(receipt, self.width)
        self.printed.append(text)
        log.info("simulated printer:\n%s", text)

    def status(self) -> PrinterStatus:
        if self.offline:
            return "offline"
        return "paper_out" if self.paper_out else "ok"

    def describe(self) -> str:
        return "simulated printer"


class SerialPrinter(ReceiptPrinter):
    """An ESC/POS printer on a serial port, through python-escpos's `Serial`."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 19200,
        codepage: str = "gb18030",
        width: int = 32,
        status_timeout_s: float = 0.5,
        write_timeout_s: float = 10.0,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.codepage = codecs.lookup(codepage).name
        self.cjk = self.codepage in CJK_CODECS
        self.width = width
        self.status_timeout_s = status_timeout_s
        self.write_timeout_s = write_timeout_s
        self._lock = threading.Lock()  # status queries and jobs must not interleave
        self._printer: Any = None

    def describe(self) -> str:
        return f"{self.port} at {self.baudrate} baud, {self.codepage}"

    # -- port ------------------------------------------------------------------------------

    def _open(self) -> Any:
        if self._printer is not None:
            return self._printer
        from escpos.exceptions import DeviceNotFoundError
        from escpos.printer import Serial

        printer = Serial(
            devfile=self.port,
            baudrate=self.baudrate,
            timeout=self.status_timeout_s,
            dsrdtr=False,
        )
        try:
            printer.open()
        except DeviceNotFoundError as exc:
            raise PrinterFault("offline", f"{self.port}: cannot open: {_first_line(exc)}") from exc
        # A printer that stops reading (no paper, flow control) must not hang the worker.
        printer.device.write_timeout = self.write_timeout_s
        self._printer = printer
        return printer

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        printer, self._printer = self._printer, None
        if printer is not None:
            try:
                printer.close()
            except Exception:
                log.debug("closing %s failed", self.port, exc_info=True)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> PrinterStatus:
        with self._lock:
            try:
                return self._status(self._open())
            except PrinterFault as fault:
                log.debug("printer status: %s", fault)
                return "offline"
            except Exception as exc:
                log.debug("printer status failed: %r", exc)
                self._drop()
                return "offline"

    def _query(self, printer: Any, n: int) -> int | None:
        """One real-time status byte, or None if the printer stays silent."""
        dev = printer.device
        dev.reset_input_buffer()  # a late answer to an earlier query is not this one
        dev.write(DLE_EOT + bytes([n]))
        dev.flush()
        deadline = time.monotonic() + self.status_timeout_s
        while time.monotonic() < deadline:
            byte = dev.read(1)
            if not byte:
                return None
            if byte[0] & _FIXED_MASK == _FIXED_BITS:
                return byte[0]
            # anything else is noise (an automatic status burst): keep listening
        return None

    def _status(self, printer: Any) -> PrinterStatus:
        online = self._query(printer, 1)
        if online is None:
            return "offline"
        if online & _ONLINE_OFFLINE_BIT:
            cause = self._query(printer, 2)
            if cause is not None and cause & _CAUSE_PAPER_END_STOP:
                return "paper_out"
            paper = self._query(printer, 4)
            if paper is not None and paper & _PAPER_END_BITS == _PAPER_END_BITS:
                return "paper_out"
            return "offline"
        paper = self._query(printer, 4)
        if paper is None:
            return "offline"
        if paper & _PAPER_END_BITS == _PAPER_END_BITS:
            return "paper_out"
        return "ok"

    # -- printing --------------------------------------------------------------------------

    def print_receipt(self, receipt: Receipt) -> None:
        with self._lock:
            try:
                printer = self._open()
                state = self._status(printer)
                if state != "ok":
                    raise PrinterFault(_fault_kind(state), f"{self.port}: status {state}")
                self._send(printer, receipt)
                printer.device.flush()
                if self._status(printer) == "paper_out":
                    raise PrinterFault("paper_out", f"{self.port}: paper ran out while printing")
            except PrinterFault:
                raise
            except Exception as exc:
                self._drop()  # reopen next time: a USB printer may have come back
                kind: FaultKind = "offline" if _is_port_error(exc) else "error"
                raise PrinterFault(kind, f"{self.port}: {_first_line(exc)}") from exc

    def _text(self, printer: Any, text: str) -> None:
        if self.cjk:
            printer._raw(text.encode(self.codepage, errors="replace"))
        else:
            printer.text(text)

    def _send(self, printer: Any, receipt: Receipt) -> None:
        printer.hw("INIT")  # ESC @: a clean state whatever the last job left
        if self.cjk:
            printer._raw(CJK_MODE_ON)
        else:
            printer.charcode(self.codepage.upper())
        # Title: centred, bold, double size (GS ! applies to Chinese and ASCII alike).
        printer._raw(ESC + b"a\x01" + ESC + b"E\x01" + GS + b"!\x11")
        self._text(printer, receipt.title + "\n")
        printer._raw(GS + b"!\x00" + ESC + b"E\x00" + ESC + b"a\x00")
        self._text(printer, "-" * self.width + "\n")
        for line in receipt.lines:
            self._text(printer, line + "\n")
        if receipt.qr:
            printer._raw(ESC + b"a\x01")
            printer.qr(receipt.qr, native=True, size=6 if self.width <= 32 else 8)
            printer._raw(ESC + b"a\x00")
        if receipt.footer:
            self._text(printer, "-" * self.width + "\n")
            printer._raw(ESC + b"a\x01")
            self._text(printer, receipt.footer + "\n")
            printer._raw(ESC + b"a\x00")
        printer.cut()  # ESC d 6 (feed past the cutter), GS V 0


def _fault_kind(state: str) -> FaultKind:
    return "paper_out" if state == "paper_out" else "offline" if state == "offline" else "error"


def _is_port_error(exc: BaseException) -> bool:
    import serial

    return isinstance(exc, serial.SerialException | OSError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


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
