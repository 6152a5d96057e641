"""Receipt printers: what the kiosk needs from one, and the two that need no hardware.

`ReceiptPrinter` is the seam; `SerialPrinter` (`kiosk.devices.serial_printer`) speaks
ESC/POS over a serial port, `SimulatedPrinter` keeps slips as text, `NullPrinter` is a
shop without a printer. Printing blocks, so the kiosk goes through `PrinterWorker`
(`kiosk.devices.printer_worker`). Which one a kiosk uses is the wiring root's choice.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Final, Literal

from kiosk.receipts import Receipt, render_text

log = logging.getLogger(__name__)

PrinterStatus = Literal["ok", "paper_out", "offline", "disabled"]
FaultKind = Literal["paper_out", "offline", "error"]
FaultCallback = Callable[[str, str], None]

#: Code pages sent as double-byte text in the printer's Chinese/Kanji mode.
CJK_CODECS: Final = frozenset({"gb18030", "gbk", "gb2312", "big5", "big5hkscs", "shift_jis"})


class PrinterFault(Exception):
    """A receipt could not be printed. `kind` is paper_out, offline or error."""

    def __init__(self, kind: FaultKind, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind: FaultKind = kind
        self.detail = detail


class ReceiptPrinter(ABC):
    """What the kiosk needs from a printer. Blocking: use it through `PrinterWorker`."""

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
