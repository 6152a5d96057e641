"""Devices from the kiosk's config: the only code that reads the device sections.

Part of the wiring root (`kiosk.runtime`, and `o2o-kiosk check`): the device modules
take plain parameters and know nothing of the config file.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

from gpiozero.exc import GPIOZeroError, PinFactoryFallback

from kiosk.config import LockersSection, PrinterSection
from kiosk.devices.doorsim import DoorSimulator
from kiosk.devices.locker import FaultCallback, Locker, LockerConfigError
from kiosk.devices.lockers import LockerBank
from kiosk.devices.printer import NullPrinter, ReceiptPrinter, SimulatedPrinter

log = logging.getLogger(__name__)

Pins = list[tuple[int | str | None, int | str | None]]


def printer_from_config(cfg: PrinterSection) -> ReceiptPrinter:
    """The printer the config names: a serial ESC/POS one, a simulated one, or none."""
    if cfg.type == "serial":
        from kiosk.devices.serial_printer import SerialPrinter  # escpos only when needed

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


def lockers_from_config(
    cfg: LockersSection,
    *,
    pin_factory: Any = None,
    on_fault: FaultCallback | None = None,
) -> LockerBank:
    """Build the bank. Raises `LockerConfigError` naming the locker that failed."""
    simulated = cfg.type == "simulated"
    if simulated and pin_factory is None:
        from gpiozero.pins.mock import MockFactory

        pin_factory = MockFactory()
    pins = _pin_plan(cfg) if simulated else [(b.relay_pin, b.door_pin) for b in cfg.bank]
    simulator = (
        DoorSimulator(
            pin_factory,
            open_delay_s=cfg.sim_open_delay_s,
            close_after_s=cfg.sim_close_after_s,
            active_high=cfg.active_high,
            door_pull_up=cfg.door_pull_up,
        )
        if simulated
        else None
    )
    with warnings.catch_warnings(record=True) as fallbacks:
        # gpiozero warns once per pin library it cannot load; on failure those
        # reasons are the useful part of the message, so they go into it.
        warnings.simplefilter("always", PinFactoryFallback)
        try:
            lockers = _build(cfg, pins, pin_factory, simulator)
        except LockerConfigError as exc:
            reasons = "; ".join(str(w.message) for w in fallbacks)
            if reasons:
                raise LockerConfigError(f"{exc} ({reasons})") from exc.__cause__
            raise
    for w in fallbacks:
        log.debug("%s", w.message)
    bank = LockerBank(lockers, simulator)
    bank.on_fault = on_fault
    return bank


def _build(
    cfg: LockersSection, pins: Pins, pin_factory: Any, simulator: DoorSimulator | None
) -> list[Locker]:
    pulse_lock = threading.Lock()
    lockers: list[Locker] = []
    try:
        for i, (spec, (relay_pin, door_pin)) in enumerate(zip(cfg.bank, pins, strict=True)):
            if relay_pin is None or door_pin is None:
                raise LockerConfigError(f"lockers.bank[{i}] needs relay_pin and door_pin")
            number = i + 1
            if simulator is not None:
                simulator.prepare(number, relay_pin, door_pin)
            try:
                locker = Locker(
                    number,
                    relay_pin,
                    door_pin,
                    size=spec.size,
                    active_high=cfg.active_high,
                    door_pull_up=cfg.door_pull_up,
                    door_bounce_s=cfg.door_bounce_s,
                    pulse_s=cfg.pulse_s,
                    door_timeout_s=cfg.door_timeout_s,
                    sensor_fault_policy=cfg.sensor_fault_policy,
                    sensor_fault_after=cfg.sensor_fault_after,
                    pulse_lock=pulse_lock,
                    pin_factory=pin_factory,
                )
            except (GPIOZeroError, OSError, RuntimeError, ValueError) as exc:
                raise LockerConfigError(
                    f"lockers.bank[{i}] (relay {relay_pin}, door {door_pin}): {exc}"
                ) from exc
            lockers.append(locker)
            if simulator is not None:
                simulator.attach(locker)
    except BaseException:
        for locker in lockers:
            locker.close()
        if simulator is not None:
            simulator.stop()
        raise
    return lockers


#: BCM pins handed to simulated lockers that name none: (relay, door) pairs.
_SIM_PINS = [
    (5, 6), (13, 19), (26, 16), (20, 21), (12, 25), (23, 24), (17, 27),
    (22, 4), (18, 7), (8, 9), (10, 11), (14, 15), (2, 3),
]  # fmt: skip


def _pin_plan(cfg: LockersSection) -> Pins:
    """Pins for simulated lockers: the configured ones, else free mock pins."""
    used = {str(p) for b in cfg.bank for p in (b.relay_pin, b.door_pin) if p is not None}
    spare = iter(pair for pair in _SIM_PINS if not {str(pair[0]), str(pair[1])} & used)
    plan: Pins = []
    for i, b in enumerate(cfg.bank):
        if b.relay_pin is not None and b.door_pin is not None:
            plan.append((b.relay_pin, b.door_pin))
            continue
        try:
            plan.append(next(spare))
        except StopIteration:
            raise LockerConfigError(
                f"lockers.bank[{i}]: more simulated lockers than free mock pins; "
                "name relay_pin and door_pin"
            ) from None
    return plan
