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
through `PrinterWorker` (`kiosk.devices.printer_worker`).
"""

from __future__ import annotations

import codecs
import logging
import threading
import time
from typing import Any, Final

from kiosk.devices.printer import (
    CJK_CODECS,
    FaultKind,
    PrinterFault,
    PrinterStatus,
    ReceiptPrinter,
)
from kiosk.receipts import Receipt

log = logging.getLogger(__name__)


ESC: Final = b"\x1b"
GS: Final = b"\x1d"
FS: Final = b"\x1c"
DLE_EOT: Final = b"\x10\x04"
#: FS & — enter the printer's Chinese (double-byte) character mode.
CJK_MODE_ON: Final = FS + b"&"

# Real-time status bytes (DLE EOT n): bits 1 and 4 are always 1, bits 0 and 7 always 0.
_FIXED_MASK, _FIXED_BITS = 0x93, 0x12
_ONLINE_OFFLINE_BIT = 0x08  # n=1: printer is offline
_CAUSE_PAPER_END_STOP = 0x20  # n=2: printing stopped by paper end
_CAUSE_COVER_OPEN = 0x04  # n=2: cover open
_PAPER_END_BITS = 0x60  # n=4: roll paper end sensor


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
