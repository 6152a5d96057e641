"""The locker bank: the kiosk's doors as one device, numbered from 1.

Built from `Locker` parts (`kiosk.devices.locker`) that share one `pin_factory` and one
pulse lock, like gpiozero's composite boards. Which order sits in which locker, and which
events to record, is the caller's business (`kiosk.lockerflows`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from kiosk.devices.doorsim import DoorSimulator
from kiosk.devices.locker import (
    DOOR_NOT_OPENED,
    FORCED_OPEN,
    SENSOR_FAULT,
    FaultCallback,
    Locker,
    LockerConfigError,
    LockerError,
    UnknownLocker,
    UnlockResult,
)
from kiosk.sizes import fitting

log = logging.getLogger(__name__)

__all__ = [
    "DOOR_NOT_OPENED",
    "FORCED_OPEN",
    "SENSOR_FAULT",
    "Locker",
    "LockerBank",
    "LockerConfigError",
    "LockerError",
    "UnknownLocker",
    "UnlockResult",
]


class LockerBank:
    """The kiosk's lockers, numbered from 1 (built by `kiosk.factories.lockers_from_config`).

    Every part gets the same `pin_factory`; simulated, that is a gpiozero `MockFactory`
    with a `DoorSimulator`, so the kiosk runs the real code path.
    """

    def __init__(self, lockers: list[Locker], simulator: DoorSimulator | None = None) -> None:
        self.lockers = lockers
        self.simulator = simulator
        self._by_number = {locker.number: locker for locker in lockers}
        self._on_fault: FaultCallback | None = None

    # -- callbacks -------------------------------------------------------------------------

    @property
    def on_fault(self) -> FaultCallback | None:
        return self._on_fault

    @on_fault.setter
    def on_fault(self, callback: FaultCallback | None) -> None:
        self._on_fault = callback
        for locker in self.lockers:
            locker.on_fault = callback

    # -- verbs -----------------------------------------------------------------------------

    def __getitem__(self, number: int) -> Locker:
        try:
            return self._by_number[number]
        except KeyError:
            raise UnknownLocker(f"no locker {number} (lockers are 1..{len(self)})") from None

    def __len__(self) -> int:
        return len(self.lockers)

    def __iter__(self) -> Iterator[Locker]:
        return iter(self.lockers)

    def unlock(self, number: int, *, force: bool = False) -> UnlockResult:
        """See `Locker.unlock`. Blocking: call it off the UI thread."""
        return self[number].unlock(force=force)

    def wait_closed(self, number: int, timeout: float | None) -> bool:
        return self[number].wait_closed(timeout)

    def is_open(self, number: int) -> bool:
        return self[number].is_open

    def clear_fault(self, number: int) -> None:
        self[number].clear_fault()

    def free(
        self, size: str | None = None, *, exclude: set[int] | frozenset[int] = frozenset()
    ) -> list[Locker]:
        """Lockers not in `exclude` (the caller's occupied ones), not faulty, shut, that fit
        `size` (any size when None): the smallest fitting size first (`kiosk.sizes`)."""
        usable = [
            (locker.number, locker.size)
            for locker in self.lockers
            if locker.number not in exclude and locker.fault is None and not locker.is_open
        ]
        return [self._by_number[n] for n in fitting(size, usable)]

    def status(self) -> dict[str, Any]:
        """JSON-able summary for the kiosk's status telemetry."""
        lockers = [locker.status() for locker in self.lockers]
        return {
            "type": "simulated" if self.simulator is not None else "gpio",
            "count": len(lockers),
            "open": sum(1 for s in lockers if s["door"] == "open"),
            "faults": sum(1 for s in lockers if s["fault"]),
            "lockers": lockers,
        }

    def close(self) -> None:
        """Every relay off, every pin released."""
        if self.simulator is not None:
            self.simulator.stop()
        for locker in self.lockers:
            try:
                locker.close()
            except Exception:
                log.exception("locker %d: close failed", locker.number)

    def __enter__(self) -> LockerBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
