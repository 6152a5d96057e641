"""`o2o-kiosk check`: a self-test an owner runs after installing or moving the kiosk.

Each check answers one question ("can the camera see?", "is the broker reachable?") with
pass or fail and a short detail; the exit status is 0 only when every check passes.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from kiosk.config import KioskConfig
from o2o_protocol.config_file import parse_mqtt_url


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check_store(cfg: KioskConfig) -> CheckResult:
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        probe = cfg.data_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return CheckResult("store", False, f"{cfg.data_dir}: {exc.strerror}")
    return CheckResult("store", True, f"{cfg.data_dir} is writable")


def check_camera(cfg: KioskConfig) -> CheckResult:
    from kiosk.devices.camera import CameraError, open_source
    from kiosk.devices.qr import QrDecoder

    spec = "picamera2" if cfg.camera.type == "picamera2" else cfg.camera.source
    try:
        source = open_source(spec)
    except CameraError as exc:
        return CheckResult("camera", False, str(exc))
    try:
        deadline = time.monotonic() + 5.0
        frame = source.read()
        while frame is None and not source.finite and time.monotonic() < deadline:
            time.sleep(0.1)
            frame = source.read()
    finally:
        source.close()
    if frame is None:
        return CheckResult("camera", False, f"{spec}: no frame within 5 s")
    started = time.perf_counter()
    codes = QrDecoder().decode(frame)
    ms = (time.perf_counter() - started) * 1000
    h, w = frame.shape[:2]
    return CheckResult(
        "camera",
        True,
        f"{spec}: {w}x{h} frame, decoded in {ms:.0f} ms "
        f"({len(codes)} code{'' if len(codes) == 1 else 's'})",
    )


#: How long `check` waits for a real door to be shut again after its test unlock.
DOOR_CLOSE_WAIT_S = 60.0
#: Simulated doors are "shut" quickly during a check: it tests the code path, not patience.
SIM_CLOSE_AFTER_S = 0.3


def check_lockers(cfg: KioskConfig) -> list[CheckResult]:
    """Each locker: the relay pulses, the door sensor reads open, then closed again."""
    from kiosk.devices.locker import LockerError
    from kiosk.factories import lockers_from_config

    lockers_cfg = cfg.lockers
    if lockers_cfg.type == "simulated":
        close_after = min(lockers_cfg.sim_close_after_s or SIM_CLOSE_AFTER_S, SIM_CLOSE_AFTER_S)
        lockers_cfg = lockers_cfg.model_copy(update={"sim_close_after_s": close_after})
    try:
        bank = lockers_from_config(lockers_cfg)
    except LockerError as exc:
        return [CheckResult("lockers", False, str(exc))]
    label = "simulated" if lockers_cfg.type == "simulated" else "gpio"
    rows: list[CheckResult] = []
    opened: list[tuple[int, str]] = []
    try:
        for locker in bank:
            name = f"locker {locker.number}"
            if locker.is_open:
                rows.append(
                    CheckResult(
                        name,
                        False,
                        "door reads open before the test: shut it, or check the sensor wiring",
                    )
                )
                continue
            result = locker.unlock()
            if not result.confirmed:
                rows.append(
                    CheckResult(
                        name,
                        False,
                        f"{label} relay pulsed {locker.pulse_s:g} s; door not seen open within "
                        f"{locker.door_timeout_s:g} s ({result.reason})",
                    )
                )
                continue
            opened.append((locker.number, f"{result.seconds:.2f}"))
            if lockers_cfg.type == "gpio":
                print(f"locker {locker.number} opened: please shut it", file=sys.stderr)
        deadline = time.monotonic() + DOOR_CLOSE_WAIT_S
        for number, seconds in opened:
            locker = bank[number]
            shut = locker.wait_closed(max(0.0, deadline - time.monotonic()))
            detail = (
                f"{label} ({locker.size}) relay pulsed {locker.pulse_s:g} s, "
                f"door opened in {seconds} s, "
                + ("closed again" if shut else "not closed again (sensor or door)")
            )
            rows.append(CheckResult(f"locker {number}", shut, detail))
    finally:
        bank.close()
    rows.sort(key=lambda r: int(r.name.split()[-1]))
    if not rows:
        rows.append(CheckResult("lockers", False, "no lockers configured"))
    return rows


def check_printer(cfg: KioskConfig) -> CheckResult:
    """Status query (paper, online), then a test slip with Chinese text and a QR code."""
    from kiosk.devices.printer import PrinterFault
    from kiosk.factories import printer_from_config
    from kiosk.receipts import selftest_receipt

    printer = printer_from_config(cfg.printer)
    try:
        state = printer.status()
        if state == "disabled":
            return CheckResult("printer", True, "no printer configured (type none)")
        if state != "ok":
            return CheckResult("printer", False, f"{printer.describe()}: status {state}")
        try:
            printer.print_receipt(selftest_receipt(language=cfg.ui.language))
        except PrinterFault as fault:
            return CheckResult("printer", False, f"{printer.describe()}: {fault}")
        return CheckResult("printer", True, f"{printer.describe()}: status ok, test slip printed")
    finally:
        printer.close()


def check_broker(cfg: KioskConfig) -> CheckResult:
    _tls, host, port = parse_mqtt_url(cfg.mqtt.url)
    try:
        with socket.create_connection((host, port), timeout=3.0):
            pass
    except OSError as exc:
        return CheckResult("broker", False, f"{host}:{port}: {exc.strerror or exc}")
    return CheckResult("broker", True, f"{host}:{port} accepts connections")


CHECKS: tuple[Callable[[KioskConfig], CheckResult | list[CheckResult]], ...] = (
    check_store,
    check_camera,
    check_lockers,
    check_printer,
    check_broker,
)


def format_table(results: list[CheckResult]) -> str:
    """Aligned columns (check, result, detail) an owner can read at a glance."""
    rows = [("CHECK", "RESULT", "DETAIL")] + [
        (r.name, "PASS" if r.ok else "FAIL", r.detail) for r in results
    ]
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{name:<{width}}  {res:<6}  {detail}".rstrip() for name, res, detail in rows]
    passed = sum(r.ok for r in results)
    lines.append(f"{passed}/{len(results)} checks passed")
    return "\n".join(lines)


def run_checks(cfg: KioskConfig) -> int:
    """Run every check, print the table; exit status 0 only when all pass."""
    results: list[CheckResult] = []
    for check in CHECKS:
        try:
            outcome = check(cfg)
        except Exception as exc:  # a check that breaks is a failed check, not a crash
            outcome = CheckResult(check.__name__.removeprefix("check_"), False, repr(exc))
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    print(format_table(results), flush=True)
    return 0 if results and all(r.ok for r in results) else 1
