"""The receipt printer against a pseudo-terminal standing in for its serial port.

A thread on the pty's master side plays the printer: it keeps every byte the kiosk
sends and answers real-time status queries (DLE EOT n) with the configured bytes.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterator

import pytest

from kiosk.config import PrinterSection
from kiosk.devices.printer import PrinterFault, SimulatedPrinter
from kiosk.devices.printer_worker import PrinterWorker
from kiosk.devices.serial_printer import SerialPrinter
from kiosk.factories import printer_from_config
from kiosk.receipts import (
    Receipt,
    checkin_receipt,
    coupon_receipt,
    pickup_receipt,
    receipt_for,
    render_text,
)

# Status bytes: bits 1 and 4 always set.
ONLINE = 0x12
OFFLINE = 0x12 | 0x08
PAPER_OK = 0x12
PAPER_NEAR_END = 0x12 | 0x0C
PAPER_END = 0x12 | 0x60
CAUSE_PAPER_END = 0x12 | 0x20

ESC_INIT = b"\x1b@"
QR_STORE = b"\x1d(k"  # GS ( k
CUT = b"\x1dV\x00"  # GS V 0


class FakePrinter:
    """The far end of the serial line."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.replies: dict[int, int] = {1: ONLINE, 2: 0x12, 4: PAPER_OK}
        self.queries: list[int] = []
        self._data = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def data(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def printed(self) -> bytes:
        """What was sent, status queries removed."""
        data = self.data
        for n in (1, 2, 4):
            data = data.replace(b"\x10\x04" + bytes([n]), b"")
        return data

    def wait_for(self, needle: bytes, timeout: float = 3.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            assert time.monotonic() < deadline, f"{needle!r} never arrived: {self.data!r}"
            time.sleep(0.01)
        return self.data

    def _run(self) -> None:
        scanned = 0
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            with self._lock:
                self._data.extend(chunk)
                while True:
                    i = self._data.find(b"\x10\x04", scanned)
                    if i < 0 or i + 2 >= len(self._data):
                        break
                    n = self._data[i + 2]
                    scanned = i + 3
                    self.queries.append(n)
                    reply = self.replies.get(n)
                    if reply is not None:
                        os.write(self.master, bytes([reply]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def fake() -> Iterator[FakePrinter]:
    f = FakePrinter()
    yield f
    f.close()


@pytest.fixture
def printer(fake: FakePrinter) -> Iterator[SerialPrinter]:
    p = SerialPrinter(fake.path, baudrate=19200, codepage="gb18030", status_timeout_s=0.2)
    yield p
    p.close()


CHECKIN = {"name": "小明", "visits": 3, "points_earned": 10, "points": 30, "counted": True}


def test_chinese_receipt_bytes_init_gb18030_qr_cut(
    fake: FakePrinter, printer: SerialPrinter
) -> None:
    receipt = checkin_receipt(CHECKIN, language="zh_CN", next_visit_url="https://shop.example/c/1")
    printer.print_receipt(receipt)
    fake.wait_for(CUT)
    data = fake.printed()

    init = data.index(ESC_INIT)
    assert data[init + 2 : init + 4] == b"\x1c&"  # FS &: the printer's Chinese mode
    title = data.index("签到成功".encode("gb18030"))
    name = data.index("会员：小明".encode("gb18030"))
    assert "小明".encode() not in data  # GB18030, not UTF-8
    content = b"https://shop.example/c/1"
    # GS ( k <pL pH> 1 P 0 <data>: store the QR data, then GS ( k ... 1 Q 0: print it.
    store = data.index(QR_STORE + (len(content) + 3).to_bytes(2, "little") + b"1P0" + content)
    show = data.index(QR_STORE + b"\x03\x001Q0")
    cut = data.rindex(CUT)
    assert init < title < name < store < show < cut
    assert data.endswith(CUT)
    assert "谢谢惠顾".encode("gb18030") in data[show:cut]
    # Status was checked before printing (and after, for paper running out mid-slip).
    assert fake.queries[:2] == [1, 4]


def test_gb18030_only_characters_print(fake: FakePrinter, printer: SerialPrinter) -> None:
    rare = "𠀀"  # outside GBK: four bytes in GB18030
    printer.print_receipt(Receipt("取货", (f"备注：{rare}",)))
    fake.wait_for(CUT)
    assert rare.encode("gb18030") in fake.printed()
    assert len(rare.encode("gb18030")) == 4


def test_single_byte_codepage_uses_escpos_code_tables(fake: FakePrinter) -> None:
    p = SerialPrinter(fake.path, codepage="cp437", status_timeout_s=0.2)
    try:
        p.print_receipt(Receipt("Checked in", ("Points: 30",)))
        data = fake.wait_for(CUT)
    finally:
        p.close()
    assert b"\x1c&" not in data
    assert b"\x1bt\x00" in data  # ESC t 0: code page 437
    assert b"Points: 30\n" in data


@pytest.mark.parametrize(
    "replies",
    [
        {1: OFFLINE, 2: CAUSE_PAPER_END, 4: PAPER_END},  # a printer that stopped for paper
        {1: ONLINE, 4: PAPER_END},
    ],
)
def test_paper_out_is_detected_and_nothing_is_printed(
    fake: FakePrinter, printer: SerialPrinter, replies: dict[int, int]
) -> None:
    fake.replies = replies
    assert printer.status() == "paper_out"
    with pytest.raises(PrinterFault) as info:
        printer.print_receipt(Receipt("签到成功"))
    assert info.value.kind == "paper_out"
    time.sleep(0.05)
    assert ESC_INIT not in fake.data


def test_paper_near_end_still_prints(fake: FakePrinter, printer: SerialPrinter) -> None:
    fake.replies[4] = PAPER_NEAR_END
    assert printer.status() == "ok"


def test_silent_printer_is_offline_quickly(fake: FakePrinter, printer: SerialPrinter) -> None:
    fake.replies = {}
    started = time.monotonic()
    assert printer.status() == "offline"
    # Bounded by the status time out, not by the serial port's: a hang guard, not a speed check.
    assert time.monotonic() - started < 10
    with pytest.raises(PrinterFault) as info:
        printer.print_receipt(Receipt("x"))
    assert info.value.kind == "offline"


def test_cover_open_is_offline(fake: FakePrinter, printer: SerialPrinter) -> None:
    fake.replies = {1: OFFLINE, 2: 0x12 | 0x04, 4: PAPER_OK}
    assert printer.status() == "offline"


def test_missing_port_is_offline(tmp_path: object) -> None:
    p = SerialPrinter("/dev/nonexistent-printer", status_timeout_s=0.1)
    assert p.status() == "offline"
    with pytest.raises(PrinterFault) as info:
        p.print_receipt(Receipt("x"))
    assert info.value.kind == "offline" and "/dev/nonexistent-printer" in str(info.value)


def test_from_config_picks_the_backend(fake: FakePrinter) -> None:
    serial = printer_from_config(PrinterSection(type="serial", port=fake.path))
    assert isinstance(serial, SerialPrinter) and serial.codepage == "gb18030"
    assert isinstance(printer_from_config(PrinterSection()), SimulatedPrinter)
    none = printer_from_config(PrinterSection(type="none"))
    assert none.status() == "disabled"
    none.print_receipt(Receipt("x"))


# -- the worker -----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.faults: list[tuple[str, str]] = []
        self.statuses: list[str] = []

    def fault(self, kind: str, detail: str) -> None:
        self.faults.append((kind, detail))

    def status(self, state: str) -> None:
        self.statuses.append(state)


def test_worker_survives_paper_out_and_reports_it_once(
    fake: FakePrinter, printer: SerialPrinter
) -> None:
    rec = Recorder()
    worker = PrinterWorker(printer, on_fault=rec.fault, on_status=rec.status, poll_s=0).start()
    try:
        fake.replies[4] = PAPER_END
        assert worker.submit(Receipt("一"))
        assert worker.submit(Receipt("二"))
        assert worker.join(5)
        assert [k for k, _ in rec.faults] == ["paper_out"]  # once, not per receipt
        assert worker.status == "paper_out"
        fake.replies[4] = PAPER_OK  # staff loaded a new roll
        worker.submit(pickup_receipt({"order_id": "A-17", "locker": 2}))
        assert worker.join(5)
        data = fake.wait_for(CUT)
        assert "订单号：A-17".encode("gb18030") in data
        assert rec.statuses == ["paper_out", "ok"]
    finally:
        worker.stop()


def test_worker_keeps_running_after_a_backend_bug() -> None:
    class Broken(SimulatedPrinter):
        calls = 0

        def print_receipt(self, receipt: Receipt) -> None:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("bug")
            super().print_receipt(receipt)

    rec = Recorder()
    backend = Broken()
    worker = PrinterWorker(backend, on_fault=rec.fault, poll_s=0).start()
    try:
        worker.submit(Receipt("a"))
        worker.submit(Receipt("b"))
        assert worker.join(5)
        assert rec.faults[0][0] == "error" and "bug" in rec.faults[0][1]
        assert len(backend.printed) == 1
    finally:
        worker.stop()


def test_submit_never_blocks_the_caller() -> None:
    release = threading.Event()

    class Slow(SimulatedPrinter):
        def print_receipt(self, receipt: Receipt) -> None:
            release.wait(30)
            super().print_receipt(receipt)

    worker = PrinterWorker(Slow(), poll_s=0, max_queue=2).start()
    try:
        results: list[bool] = []
        caller = threading.Thread(
            target=lambda: results.extend(worker.submit(Receipt(str(i))) for i in range(5))
        )
        caller.start()
        caller.join(5)  # while the printer is still stuck on the first receipt
        assert not release.is_set() and not caller.is_alive() and len(results) == 5
        assert results.count(False) >= 2  # a full queue drops, it does not wait
        release.set()
        assert worker.join(5)
    finally:
        worker.stop()


def test_worker_polls_status_between_jobs() -> None:
    rec = Recorder()
    sim = SimulatedPrinter()
    worker = PrinterWorker(sim, on_fault=rec.fault, poll_s=0.02).start()
    try:
        sim.offline = True
        deadline = time.monotonic() + 2
        while not rec.faults and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rec.faults and rec.faults[0][0] == "offline"
    finally:
        worker.stop()


# -- receipts -------------------------------------------------------------------------


def test_simulated_printer_keeps_the_text() -> None:
    sim = SimulatedPrinter()
    sim.print_receipt(checkin_receipt(CHECKIN))
    assert "会员：小明" in sim.printed[-1] and "积分余额：30" in sim.printed[-1]
    sim.paper_out = True
    with pytest.raises(PrinterFault, match="paper_out"):
        sim.print_receipt(Receipt("x"))


def test_receipt_builders_in_both_languages() -> None:
    en = checkin_receipt({**CHECKIN, "name": "Ann"}, language="en", ts="2026-01-02 10:00")
    assert en.title == "Checked in"
    assert en.lines == (
        "Member: Ann",
        "Visits: 3",
        "Points earned: +10",
        "Points balance: 30",
        "Time: 2026-01-02 10:00",
    )
    assert en.qr is None
    again = checkin_receipt({**CHECKIN, "counted": False, "points_earned": 0})
    assert "刚刚已签到，本次不计积分" in again.lines
    coupon = coupon_receipt({"coupon_id": "c1", "campaign": "春季", "value": "9折"})
    assert coupon.title == "优惠券已核销" and "优惠：9折" in coupon.lines
    pickup = receipt_for("pickup.opened", {"order": "A-1", "locker": 3}, language="en")
    assert pickup is not None and pickup.lines == ("Order: A-1", "Locker: 3")
    assert receipt_for("scan.rejected", {"reason": "expired"}) is None
    with_coupon = receipt_for("checkin", CHECKIN, next_visit_url="https://s.example/n")
    assert with_coupon is not None and with_coupon.qr == "https://s.example/n"
    assert "[QR] https://s.example/n" in render_text(with_coupon)


def test_member_joined_slip_carries_the_join_link() -> None:
    url = "https://shop.example/join?store=s1&j=m-42"
    data = {"member_id": "m-42", "phone_hash": "ab" * 16, "join_url": url, "known": False}
    zh = receipt_for("member.joined", data, language="zh_CN", next_visit_url="https://x/c")
    assert zh is not None and zh.title == "欢迎加入会员"
    assert zh.qr == url  # the one QR is the sign-up, not a next-visit coupon
    assert "会员号：m-42" in zh.lines and "用手机扫码，完成会员注册" in zh.lines
    en = receipt_for("member.joined", {**data, "known": True}, language="en")
    assert en is not None and en.title == "You are already a member" and en.qr == url
    assert f"[QR] {url}" in render_text(en)
    assert "ab" * 16 not in render_text(zh) + render_text(en)  # the hash is not for paper
    # No sign-up page configured: the link is the bare member id, so nothing to scan.
    bare = receipt_for("member.joined", {**data, "join_url": "m-42"}, language="en")
    assert bare is not None and bare.qr is None and "Member no.: m-42" in bare.lines
