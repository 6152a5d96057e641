"""Simulated locker doors on gpiozero mock pins, so a kiosk without hardware (the demo,
the tests) runs the real locker code path end to end."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kiosk.devices.locker import Locker


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
