"""One pickup locker: a latch relay and a door switch, on the Pi's GPIO (gpiozero).

The device layer only knows doors, relays and sensors. It reports what happened through
return values (`UnlockResult`) and the `on_fault` callback; which order sits in which
locker, and which events to record, is the caller's business.

Wiring assumed (the common kind of locker): a relay powers the door's latch solenoid for
`pulse_s`; a spring pushes the door ajar; a reed switch closes while the door is shut. With
the default pull-up a cut sensor wire reads "open", so a broken sensor shows up as a door
that is open when it should not be, never as a door that is safely shut.

Broken-sensor policy (`lockers.sensor_fault_policy`): a sensor is suspected when the door
already reads open as an unlock starts, or when it has not read open after
`sensor_fault_after` unlocks in a row (latch jammed, or switch stuck closed). Either way
`on_fault(n, "sensor_fault", detail)` tells the owner. Then:

- ``trust_relay`` (default): the relay still pulses and the unlock reports
  ``opened=True, reason="sensor_fault"`` (unconfirmed), so a customer's goods are never
  trapped behind a broken switch; the caller can ask the customer to call staff if the
  door stayed shut.
- ``refuse``: no pulse; ``opened=False, reason="sensor_fault"``; staff open it with
  ``unlock(n, force=True)`` (a remote ``locker.open``).

A suspicion clears when the sensor proves itself: the door reads open during an unlock, or
a door that read open at an unlock reads closed again; `clear_fault(n)` clears it by hand.

Pulses are serialised across the bank (`kiosk.devices.lockers`): two latch solenoids
firing at once can brown out a small supply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from gpiozero import Button, OutputDevice

log = logging.getLogger(__name__)

FaultKind = Literal["forced_open", "sensor_fault"]
#: ``on_fault(locker number, kind, detail)``. Called from the GPIO callback thread or the
#: unlocking thread: keep it short and never block in it.
FaultCallback = Callable[[int, str, str], None]
SensorPolicy = Literal["trust_relay", "refuse"]

DOOR_NOT_OPENED: Final = "door_not_opened"
SENSOR_FAULT: Final = "sensor_fault"
FORCED_OPEN: Final = "forced_open"


class LockerError(Exception):
    """Root of the locker errors."""


class LockerConfigError(LockerError, ValueError):
    """The bank cannot be built as configured (bad pin, pin in use, no GPIO here)."""


class UnknownLocker(LockerError, LookupError):
    """No locker with that number."""


@dataclass(frozen=True)
class UnlockResult:
    """What one unlock did.

    ``reason`` is None for a confirmed open, ``"door_not_opened"`` when the door did not
    read open in time, ``"sensor_fault"`` when the sensor could not confirm (with
    ``opened=True`` under ``trust_relay``, ``opened=False`` under ``refuse``).
    """

    number: int
    opened: bool
    reason: str | None = None
    #: Seconds from the start of the pulse to the door reading open (or to giving up).
    seconds: float = 0.0

    @property
    def confirmed(self) -> bool:
        return self.opened and self.reason is None


class Locker:
    """One door: a latch relay (`OutputDevice`) and a door switch (`Button`).

    The switch is "pressed" while the door is shut. Both parts take the same
    `pin_factory`, like gpiozero's own composite devices.
    """

    def __init__(
        self,
        number: int,
        relay_pin: int | str,
        door_pin: int | str,
        *,
        size: str = "M",
        active_high: bool = True,
        door_pull_up: bool = True,
        door_bounce_s: float | None = None,
        pulse_s: float = 0.5,
        door_timeout_s: float = 5.0,
        sensor_fault_policy: SensorPolicy = "trust_relay",
        sensor_fault_after: int = 2,
        on_fault: FaultCallback | None = None,
        pulse_lock: threading.Lock | None = None,
        pin_factory: Any = None,
    ) -> None:
        self.number = number
        self.size = size
        self.pulse_s = pulse_s
        self.door_timeout_s = door_timeout_s
        self.sensor_fault_policy: SensorPolicy = sensor_fault_policy
        self.sensor_fault_after = sensor_fault_after
        self.on_fault = on_fault
        self._pulse_lock = pulse_lock or threading.Lock()
        self._unlock_lock = threading.Lock()  # one unlock at a time per door
        self._state_lock = threading.Lock()
        self._opened = threading.Event()
        self._closed = threading.Event()
        self._window_until = 0.0  # monotonic end of the current unlock window
        self._last_unlock = 0.0
        self._opened_at = 0.0
        self._misses = 0
        self._fault: str | None = None
        self._fault_detail = ""
        # initial_value=False: the relay pin is set up already off (no blip at start-up).
        self.relay = OutputDevice(
            relay_pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
        )
        try:
            self.door = Button(
                door_pin,
                pull_up=door_pull_up,
                bounce_time=door_bounce_s or None,
                # A shut door is a Button "held" for hours; Button's hold thread waits
                # hold_time per round, which is what close() waits for. Keep it short.
                hold_time=0.05,
                pin_factory=pin_factory,
            )
        except Exception:
            self.relay.close()
            raise
        if self.door.is_pressed:
            self._closed.set()
        self.door.when_released = self._door_opened
        self.door.when_pressed = self._door_closed

    # -- state -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """What the door sensor says now."""
        return not self.door.is_pressed

    @property
    def fault(self) -> str | None:
        """The current fault kind (``forced_open``, ``sensor_fault``) or None."""
        return self._fault

    def status(self) -> dict[str, Any]:
        state = "fault" if self._fault else ("open" if self.is_open else "closed")
        return {
            "number": self.number,
            "size": self.size,
            "state": state,
            "door": "open" if self.is_open else "closed",
            "fault": self._fault,
        }

    def clear_fault(self) -> None:
        """Staff say the door and its sensor are fine again."""
        with self._state_lock:
            self._fault, self._fault_detail, self._misses = None, "", 0

    # -- verbs ---------------------------------------------------------------------------

    def unlock(self, *, force: bool = False) -> UnlockResult:
        """Pulse the latch and wait (up to `door_timeout_s`) for the door to read open.

        Blocks for at least `pulse_s`: call it off the UI thread. ``force`` (staff) pulses
        even when the sensor policy would refuse.
        """
        with self._unlock_lock:
            already_open = self.is_open
            if already_open and self._opened.is_set() and not self._closed.is_set():
                # Still open from our own last unlock (a double tap, a repeated remote
                # open): nothing to do, and no reason to fire the latch again.
                return UnlockResult(self.number, True, None, 0.0)
            suspect = already_open or self._fault == SENSOR_FAULT
            if already_open:
                self._set_fault(
                    SENSOR_FAULT, "door read open before the unlock: left open, or sensor wire cut"
                )
            if suspect and self.sensor_fault_policy == "refuse" and not force:
                return UnlockResult(self.number, False, SENSOR_FAULT)
            start = self._pulse(arm=True)
            if already_open:
                return UnlockResult(self.number, True, SENSOR_FAULT, time.monotonic() - start)
            opened = self._opened.wait(max(0.0, start + self.door_timeout_s - time.monotonic()))
            seconds = time.monotonic() - start
            with self._state_lock:
                self._window_until = 0.0 if not opened else self._window_until
            if opened:
                return UnlockResult(self.number, True, None, self._opened_at - start)
            with self._state_lock:
                self._misses += 1
                misses = self._misses
            if misses >= self.sensor_fault_after:
                self._set_fault(
                    SENSOR_FAULT,
                    f"door did not read open after {misses} unlocks in a row: "
                    "latch jammed or sensor stuck closed",
                )
                if self.sensor_fault_policy == "trust_relay" or force:
                    return UnlockResult(self.number, True, SENSOR_FAULT, seconds)
                return UnlockResult(self.number, False, SENSOR_FAULT, seconds)
            return UnlockResult(self.number, False, DOOR_NOT_OPENED, seconds)

    def pulse(self) -> None:
        """Power the latch for `pulse_s` without watching the door (a relay test)."""
        self._pulse(arm=False)

    def _pulse(self, *, arm: bool) -> float:
        """Pulse once the bank's other relays are quiet; the relay is off whatever happens.

        With `arm`, the unlock window (when a door opening is expected, not forced) starts
        with the pulse, so waiting for another locker's pulse does not eat into it.
        """
        with self._pulse_lock:
            start = time.monotonic()
            if arm:
                with self._state_lock:
                    self._opened.clear()
                    self._window_until = start + self.door_timeout_s
                    self._last_unlock = start
            try:
                self.relay.on()
                time.sleep(self.pulse_s)
            finally:
                self.relay.off()
        return start

    def wait_closed(self, timeout: float | None) -> bool:
        """Block until the door reads closed (True) or `timeout` seconds pass (False)."""
        return self._closed.wait(timeout)

    def close(self) -> None:
        """Relay off, pins released. Safe to call twice."""
        try:
            if not self.relay.closed:
                self.relay.off()
        finally:
            self.relay.close()
            self.door.close()

    # -- sensor callbacks (GPIO thread) --------------------------------------------------

    def _door_opened(self) -> None:
        now = time.monotonic()
        with self._state_lock:
            self._closed.clear()
            expected = now <= self._window_until
            if expected:
                self._opened_at = now
                self._opened.set()
                self._misses = 0
                proven = self._fault == SENSOR_FAULT
                if proven:
                    self._fault, self._fault_detail = None, ""
        if expected:
            if proven:
                log.info("locker %d: door sensor works again", self.number)
            return
        detail = "door opened without an unlock"
        if self._last_unlock:
            detail += f" ({now - self._last_unlock:.1f} s after the last unlock)"
        self._set_fault(FORCED_OPEN, detail)

    def _door_closed(self) -> None:
        with self._state_lock:
            self._closed.set()
            self._window_until = 0.0  # a later open is not part of this unlock
            # A forced door that is shut again is no longer a fault; nor is a sensor that
            # read open before an unlock and now reads closed (it can see the door).
            if self._fault is not None and (
                self._fault == FORCED_OPEN or self._fault_detail.startswith("door read open")
            ):
                self._fault, self._fault_detail = None, ""

    def _set_fault(self, kind: FaultKind, detail: str) -> None:
        with self._state_lock:
            repeated = self._fault == kind and self._fault_detail == detail
            self._fault, self._fault_detail = kind, detail
        if repeated:
            return
        log.warning("locker %d: %s: %s", self.number, kind, detail)
        if self.on_fault is not None:
            try:
                self.on_fault(self.number, kind, detail)
            except Exception:  # a broken listener must not break the door
                log.exception("locker %d: on_fault callback failed", self.number)
