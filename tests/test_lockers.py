"""Lockers on gpiozero's own MockFactory pins: relays asserted, door pins driven."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory
from pydantic import ValidationError

from kiosk.config import LockerSection, LockersSection
from kiosk.devices.lockers import LockerBank, LockerConfigError, UnknownLocker
from kiosk.factories import lockers_from_config

PULSE = 0.1
TIMEOUT = 0.4
PINS = [(17, 27), (22, 23)]


class Faults(list[tuple[int, str, str]]):
    def __call__(self, number: int, kind: str, detail: str) -> None:
        self.append((number, kind, detail))

    def kinds(self) -> list[tuple[int, str]]:
        return [(n, k) for n, k, _ in self]


def make_cfg(**overrides: object) -> LockersSection:
    values: dict[str, object] = {
        "type": "gpio",
        "pulse_s": PULSE,
        "door_timeout_s": TIMEOUT,
        "bank": [
            LockerSection(size="S", relay_pin=PINS[0][0], door_pin=PINS[0][1]),
            LockerSection(size="L", relay_pin=PINS[1][0], door_pin=PINS[1][1]),
        ],
    }
    values.update(overrides)
    return LockersSection.model_validate(values)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def faults() -> Faults:
    return Faults()


def build(factory: MockFactory, faults: Faults, **overrides: object) -> LockerBank:
    bank = lockers_from_config(make_cfg(**overrides), pin_factory=factory, on_fault=faults)
    for _relay, door in PINS:
        factory.pin(door).drive_low()  # doors shut (reed switch closed to ground)
    return bank


@pytest.fixture
def bank(factory: MockFactory, faults: Faults) -> Iterator[LockerBank]:
    b = build(factory, faults)
    yield b
    b.close()


def door_open(factory: MockFactory, number: int) -> None:
    factory.pin(PINS[number - 1][1]).drive_high()


def door_shut(factory: MockFactory, number: int) -> None:
    factory.pin(PINS[number - 1][1]).drive_low()


def later(delay: float, action: Callable[..., None], *args: object) -> threading.Timer:
    t = threading.Timer(delay, action, args)
    t.start()
    return t


def relay_pin(factory: MockFactory, number: int) -> Any:
    return factory.pin(PINS[number - 1][0])


# -- start-up and shut-down -----------------------------------------------------------


@pytest.mark.parametrize("active_high", [True, False])
def test_relays_are_off_from_the_start_without_a_blip(
    factory: MockFactory, faults: Faults, active_high: bool
) -> None:
    bank = build(factory, faults, active_high=active_high)
    try:
        for number in (1, 2):
            pin = relay_pin(factory, number)
            assert pin.function == "output"
            assert pin.state == (not active_high)  # the inactive level
            assert bank[number].relay.value == 0
            # The mock's first entry is its input default; never was the relay driven active.
            assert all(s.state != active_high for s in pin.states[1:])
            assert not bank.is_open(number)
        assert [locker.size for locker in bank.lockers] == ["S", "L"]
        assert [locker.number for locker in bank] == [1, 2]
    finally:
        bank.close()


@pytest.mark.parametrize("active_high", [True, False])
def test_close_switches_relays_off(factory: MockFactory, faults: Faults, active_high: bool) -> None:
    bank = build(factory, faults, active_high=active_high)
    bank[1].relay.on()
    assert relay_pin(factory, 1).state == active_high
    bank.close()
    assert relay_pin(factory, 1).states[-1].state == (not active_high)
    bank.close()  # twice is fine


# -- unlock ---------------------------------------------------------------------------


def test_unlock_pulses_the_relay_and_reports_the_door_open(
    bank: LockerBank, factory: MockFactory, faults: Faults
) -> None:
    pin = relay_pin(factory, 1)
    pin.clear_states()
    later(0.05, door_open, factory, 1)
    result = bank.unlock(1)
    assert result.opened and result.confirmed and result.reason is None
    assert 0.03 < result.seconds < TIMEOUT  # when the door opened, not the time out
    pin.assert_states_and_times([(0.0, False), (0.0, True), (PULSE, False)])
    assert len(pin.states) == 3  # exactly one pulse
    assert bank.is_open(1)
    assert faults == []
    assert bank.status()["lockers"][0]["state"] == "open"


def test_door_that_never_opens_is_door_not_opened_after_the_timeout(
    bank: LockerBank, factory: MockFactory, faults: Faults
) -> None:
    pin = relay_pin(factory, 1)
    pin.clear_states()
    started = time.monotonic()
    result = bank.unlock(1)
    elapsed = time.monotonic() - started
    assert not result.opened and result.reason == "door_not_opened"
    assert elapsed > TIMEOUT - 0.02  # it waited the door's time out (a busy machine may add)
    pin.assert_states_and_times([(0.0, False), (0.0, True), (PULSE, False)])
    assert pin.state is False  # off while waiting
    assert faults == []  # one miss is a retry, not yet a fault


def test_door_opening_without_an_unlock_is_a_forced_open_fault(
    bank: LockerBank, factory: MockFactory, faults: Faults
) -> None:
    door_open(factory, 2)
    assert faults.kinds() == [(2, "forced_open")]
    status = bank.status()
    assert status["lockers"][1] == {
        "number": 2,
        "size": "L",
        "state": "fault",
        "door": "open",
        "fault": "forced_open",
    }
    assert status["faults"] == 1
    json.dumps(status)
    door_shut(factory, 2)
    assert bank[2].fault is None
    assert bank.status()["lockers"][1]["state"] == "closed"


def test_door_reopened_after_an_unlocked_pickup_is_forced(
    bank: LockerBank, factory: MockFactory, faults: Faults
) -> None:
    later(0.02, door_open, factory, 1)
    assert bank.unlock(1).confirmed
    door_shut(factory, 1)
    door_open(factory, 1)  # the pickup is over: this one is not ours
    assert faults.kinds() == [(1, "forced_open")]


def test_jammed_latch_opening_late_is_reported(
    bank: LockerBank, factory: MockFactory, faults: Faults
) -> None:
    assert bank.unlock(1).reason == "door_not_opened"
    door_open(factory, 1)
    assert faults.kinds() == [(1, "forced_open")]
    assert "after the last unlock" in faults[0][2]


def test_wait_closed(bank: LockerBank, factory: MockFactory) -> None:
    assert bank.wait_closed(1, 0.01)
    later(0.02, door_open, factory, 1)
    assert bank.unlock(1).opened
    assert not bank.wait_closed(1, 0.05)
    later(0.05, door_shut, factory, 1)
    assert bank.wait_closed(1, 1.0)
    assert not bank.is_open(1)


def test_pulses_never_overlap_across_the_bank(bank: LockerBank, factory: MockFactory) -> None:
    """Two solenoids at once can brown out the supply: pulses take turns."""
    for n in (1, 2):
        later(0.01, door_open, factory, n)
    started = time.monotonic()
    threads = [threading.Thread(target=bank.unlock, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started >= 2 * PULSE - 0.01


def test_unknown_locker(bank: LockerBank) -> None:
    with pytest.raises(UnknownLocker, match=r"1\.\.2"):
        bank.unlock(3)
    with pytest.raises(LookupError):
        bank.is_open(0)


def test_free_lockers_fit_the_size_smallest_first(bank: LockerBank, factory: MockFactory) -> None:
    assert [lk.number for lk in bank.free("S")] == [1, 2]
    assert [lk.number for lk in bank.free("M")] == [2]
    assert [lk.number for lk in bank.free("S", exclude={1})] == [2]
    door_open(factory, 2)  # forced: not offered
    assert bank.free("L") == []


# -- broken sensors -------------------------------------------------------------------


def test_cut_sensor_wire_trust_relay_still_releases_the_goods(
    bank: LockerBank, factory: MockFactory, faults: Faults
) -> None:
    door_open(factory, 1)  # a cut wire reads open (pull-up)
    faults.clear()
    pin = relay_pin(factory, 1)
    pin.clear_states()
    result = bank.unlock(1)
    assert result.opened and not result.confirmed and result.reason == "sensor_fault"
    assert len(pin.states) == 3  # pulsed anyway
    assert faults.kinds() == [(1, "sensor_fault")]
    assert "wire" in faults[0][2]
    door_shut(factory, 1)  # the sensor reads again: suspicion cleared
    assert bank[1].fault is None


def test_cut_sensor_wire_refuse_policy_leaves_it_to_staff(
    factory: MockFactory, faults: Faults
) -> None:
    bank = build(factory, faults, sensor_fault_policy="refuse")
    try:
        door_open(factory, 1)
        pin = relay_pin(factory, 1)
        pin.clear_states()
        result = bank.unlock(1)
        assert not result.opened and result.reason == "sensor_fault"
        assert len(pin.states) == 1  # no pulse
        assert (1, "sensor_fault") in faults.kinds()
        staff = bank.unlock(1, force=True)  # remote locker.open
        assert staff.opened and len(pin.states) == 3
    finally:
        bank.close()


def test_sensor_stuck_closed_trust_relay_opens_on_the_retry(
    bank: LockerBank, factory: MockFactory, faults: Faults
) -> None:
    first = bank.unlock(1)
    assert (first.opened, first.reason) == (False, "door_not_opened")
    second = bank.unlock(1)  # sensor_fault_after = 2
    assert (second.opened, second.reason) == (True, "sensor_fault")
    assert faults.kinds() == [(1, "sensor_fault")]
    assert "stuck closed" in faults[0][2]
    assert bank.status()["lockers"][0]["state"] == "fault"
    # The sensor proves itself on a later unlock: fault cleared, open confirmed.
    later(0.02, door_open, factory, 1)
    assert bank.unlock(1).confirmed
    assert bank[1].fault is None


def test_sensor_stuck_closed_refuse_policy(factory: MockFactory, faults: Faults) -> None:
    bank = build(factory, faults, sensor_fault_policy="refuse", sensor_fault_after=1)
    try:
        assert bank.unlock(1).reason == "sensor_fault"
        pin = relay_pin(factory, 1)
        pin.clear_states()
        again = bank.unlock(1)
        assert (again.opened, again.reason) == (False, "sensor_fault")
        assert len(pin.states) == 1  # refused without a pulse
        bank.clear_fault(1)  # staff checked the door
        later(0.02, door_open, factory, 1)
        assert bank.unlock(1).confirmed
    finally:
        bank.close()


# -- configuration and simulation -----------------------------------------------------


def test_config_rejects_a_pin_used_twice() -> None:
    with pytest.raises(ValidationError, match=r"also bank\[0\]\.relay_pin"):
        make_cfg(
            bank=[
                LockerSection(relay_pin=17, door_pin=27),
                LockerSection(relay_pin="GPIO17", door_pin=5),
            ]
        )


def test_bad_pin_is_a_clear_config_error(factory: MockFactory) -> None:
    cfg = make_cfg(bank=[LockerSection(relay_pin="GPIO99", door_pin=27)])
    with pytest.raises(LockerConfigError, match=r"bank\[0\] \(relay GPIO99"):
        lockers_from_config(cfg, pin_factory=factory)


def test_simulated_bank_runs_the_real_code_path() -> None:
    cfg = LockersSection(
        type="simulated",
        pulse_s=0.05,
        door_timeout_s=0.5,
        sim_open_delay_s=0.02,
        sim_close_after_s=0.1,
        bank=[LockerSection(size="S"), LockerSection(size="M"), LockerSection(size="L")],
    )
    faults = Faults()
    with lockers_from_config(cfg, on_fault=faults) as bank:
        assert bank.simulator is not None
        assert not any(bank.is_open(n) for n in (1, 2, 3))
        result = bank.unlock(2)
        assert result.confirmed and 0.01 < result.seconds < 0.5  # opened before the time out
        assert bank.wait_closed(2, 1.0)
        bank.simulator.jammed.add(3)
        assert bank.unlock(3).reason == "door_not_opened"
        bank.simulator.open(1)
        assert faults.kinds() == [(1, "forced_open")]
        status = bank.status()
        assert status["type"] == "simulated" and status["count"] == 3
        json.dumps(status)
