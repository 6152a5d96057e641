"""`o2o-kiosk check`: a self-test an owner runs after installing or moving the kiosk.

Each check answers one question ("can the camera see?", "is the broker reachable?") with
pass or fail and a short detail; the exit status is 0 only when every check passes.
"""

from __future__ import annotations

import os
import socket
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
        "camera", True, f"{spec}: {w}x{h} frame, decoded in {ms:.0f} ms ({len(codes)} codes)"
    )


def check_lockers(cfg: KioskConfig) -> CheckResult:
    n = len(cfg.lockers.bank)
    if cfg.lockers.type == "simulated":
        return CheckResult("lockers", True, f"{n} simulated lockers")
    return CheckResult("lockers", False, "GPIO lockers are not supported by this version yet")


def check_printer(cfg: KioskConfig) -> CheckResult:
    if cfg.printer.type in ("simulated", "none"):
        return CheckResult("printer", True, f"{cfg.printer.type} printer")
    if not os.path.exists(cfg.printer.port):
        return CheckResult("printer", False, f"{cfg.printer.port}: no such serial port")
    return CheckResult("printer", False, "serial printers are not supported by this version yet")


def check_broker(cfg: KioskConfig) -> CheckResult:
    _tls, host, port = parse_mqtt_url(cfg.mqtt.url)
    try:
        with socket.create_connection((host, port), timeout=3.0):
            pass
    except OSError as exc:
        return CheckResult("broker", False, f"{host}:{port}: {exc.strerror or exc}")
    return CheckResult("broker", True, f"{host}:{port} accepts connections")


CHECKS: tuple[Callable[[KioskConfig], CheckResult], ...] = (
    check_store,
    check_camera,
    check_lockers,
    check_printer,
    check_broker,
)


def run_checks(cfg: KioskConfig) -> int:
    results = []
    for check in CHECKS:
        try:
            results.append(check(cfg))
        except Exception as exc:  # a check that breaks is a failed check, not a crash
            results.append(CheckResult(check.__name__.removeprefix("check_"), False, repr(exc)))
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:<{width}}  {'PASS' if r.ok else 'FAIL'}  {r.detail}")
    return 0 if all(r.ok for r in results) else 1
