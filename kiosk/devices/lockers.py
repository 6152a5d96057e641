"""Pickup lockers: a latch relay and a door switch per door, on the Pi's GPIO (gpiozero).

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

Pulses are serialised across the bank: two latch solenoids firing at once can brown out
a small supply.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from gpiozero import Button, OutputDevice
from gpiozero.exc import GPIOZeroError, PinFactoryFallback

from kiosk.config import LockersSection

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


class LockerBank:
    """The kiosk's lockers, numbered from 1, built from `lockers` in the config.

    Every part gets the same `pin_factory`; with ``type = "simulated"`` that is a
    gpiozero `MockFactory` with a `DoorSimulator`, so the kiosk runs the real code path.
    """

    def __init__(self, lockers: list[Locker], simulator: DoorSimulator | None = None) -> None:
        self.lockers = lockers
        self.simulator = simulator
        self._by_number = {locker.number: locker for locker in lockers}
        self._on_fault: FaultCallback | None = None

    @classmethod
    def from_config(
        cls,
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
                lockers = cls._build(cfg, pins, pin_factory, simulator)
            except LockerConfigError as exc:
                reasons = "; ".join(str(w.message) for w in fallbacks)
                if reasons:
                    raise LockerConfigError(f"{exc} ({reasons})") from exc.__cause__
                raise
        for w in fallbacks:
            log.debug("%s", w.message)
        bank = cls(lockers, simulator)
        bank.on_fault = on_fault
        return bank

    @staticmethod
    def _build(
        cfg: LockersSection,
        pins: list[tuple[int | str | None, int | str | None]],
        pin_factory: Any,
        simulator: DoorSimulator | None,
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
        `size`: the smallest fitting size first, so large lockers stay free for large orders."""
        order = {"S": 0, "M": 1, "L": 2}
        need = order.get(size or "S", 0)
        fits = [
            locker
            for locker in self.lockers
            if locker.number not in exclude
            and order.get(locker.size, 1) >= need
            and locker.fault is None
            and not locker.is_open
        ]
        return sorted(fits, key=lambda locker: (order.get(locker.size, 1), locker.number))

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


# -- simulation -------------------------------------------------------------------------

#: BCM pins handed to simulated lockers that name none: (relay, door) pairs.
_SIM_PINS = [
    (5, 6), (13, 19), (26, 16), (20, 21), (12, 25), (23, 24), (17, 27),
    (22, 4), (18, 7), (8, 9), (10, 11), (14, 15), (2, 3),
]  # fmt: skip


def _pin_plan(cfg: LockersSection) -> list[tuple[int | str | None, int | str | None]]:
    """Pins for simulated lockers: the configured ones, else free mock pins."""
    used = {str(p) for b in cfg.bank for p in (b.relay_pin, b.door_pin) if p is not None}
    spare = iter(pair for pair in _SIM_PINS if not {str(pair[0]), str(pair[1])} & used)
    plan: list[tuple[int | str | None, int | str | None]] = []
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


def _relay_pin_class() -> type:
    from gpiozero.pins.mock import MockPin

    class RelayPin(MockPin):
        """A mock output pin that tells the simulator when the relay switches."""

        listener: Callable[[bool], None] | None = None

        def _change_state(self, value: bool) -> bool:
            changed = bool(super()._change_state(value))
            if changed and self.listener is not None:
                self.listener(value)
            return changed

    return RelayPin


class DoorSimulator:
    """Plays the doors of simulated lockers on gpiozero mock pins.

    When a relay fires, the door pin reads open `open_delay_s` later (the spring pushes
    the door ajar) and closed `close_after_s` after that (the customer shuts it; 0 keeps
    it open until `shut`). `jammed` doors ignore the relay. Tests and the demo can also
    `open`/`shut` a door by hand, which is what a forced door looks like.
    """

    def __init__(
        self,
        factory: Any,
        *,
        open_delay_s: float = 0.1,
        close_after_s: float = 3.0,
        active_high: bool = True,
        door_pull_up: bool = True,
    ) -> None:
        self.factory = factory
        self.open_delay_s = open_delay_s
        self.close_after_s = close_after_s
        self.active_high = active_high
        self.door_pull_up = door_pull_up
        self.jammed: set[int] = set()
        self._door_pins: dict[int, Any] = {}
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._pin_class = _relay_pin_class()

    def prepare(self, number: int, relay_pin: int | str, door_pin: int | str) -> None:
        """Create the locker's mock pins before the devices claim them."""
        relay = self.factory.pin(relay_pin, pin_class=self._pin_class)
        relay.listener = lambda state: self._relay_changed(number, state)
        self._door_pins[number] = self.factory.pin(door_pin)

    def attach(self, locker: Locker) -> None:
        """Start with the door shut (the pull-up alone would read it open)."""
        self.shut(locker.number)

    def open(self, number: int) -> None:
        """The door swings open (without an unlock this is a forced door)."""
        self._drive(number, is_open=True)

    def shut(self, number: int) -> None:
        """The door is pushed shut."""
        self._drive(number, is_open=False)

    def stop(self) -> None:
        """Cancel pending door movements (on close)."""
        with self._lock:
            self._stopped = True
            timers, self._timers = self._timers, set()
        for t in timers:
            t.cancel()

    def _drive(self, number: int, *, is_open: bool) -> None:
        pin = self._door_pins[number]
        # Door shut = switch closed = pin pulled to the switch's rail.
        if is_open == self.door_pull_up:
            pin.drive_high()
        else:
            pin.drive_low()

    def _relay_changed(self, number: int, state: bool) -> None:
        if state != self.active_high or number in self.jammed:
            return  # relay released, or a jammed latch
        self._later(self.open_delay_s, number, is_open=True)
        if self.close_after_s > 0:
            self._later(self.open_delay_s + self.close_after_s, number, is_open=False)

    def _later(self, delay: float, number: int, *, is_open: bool) -> None:
        def fire() -> None:
            with self._lock:
                self._timers.discard(timer)
                if self._stopped:
                    return
            self._drive(number, is_open=is_open)

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        with self._lock:
            if self._stopped:
                return
            self._timers.add(timer)
        timer.start()
