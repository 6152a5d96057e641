"""Campaign hours in the shop's time zone (o2o_protocol/hours.py): what a customer at the
door is told, and whether a code shown now is within its hours."""

from __future__ import annotations

from datetime import datetime

import pytest

from o2o_protocol.hours import describe, is_open, parse_hours, shop_zone

SHANGHAI = shop_zone("Asia/Shanghai")
AFTERNOONS = parse_hours([{"days": [2, 3, 4, 5], "from": "14:00", "to": "17:00"}])


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


def test_a_weekday_afternoon_window() -> None:
    assert is_open(AFTERNOONS, at("2026-12-01T14:00"))  # a Tuesday
    assert is_open(AFTERNOONS, at("2026-12-04T16:59"))  # Friday
    assert not is_open(AFTERNOONS, at("2026-12-01T17:00"))  # closes at 17:00
    assert not is_open(AFTERNOONS, at("2026-12-05T15:00"))  # Saturday
    assert not is_open(AFTERNOONS, at("2026-11-30T15:00"))  # Monday


def test_a_late_window_runs_past_midnight() -> None:
    late = parse_hours([{"days": [5], "from": "22:00", "to": "02:00"}])
    assert is_open(late, at("2026-12-04T23:30"))  # Friday night
    assert is_open(late, at("2026-12-05T01:59"))  # Saturday's small hours
    assert not is_open(late, at("2026-12-05T02:00"))
    assert not is_open(late, at("2026-12-04T01:00"))  # Thursday night is not in it


def test_no_hours_is_always_valid() -> None:
    assert is_open(parse_hours(None), at("2026-12-06T03:00"))


def test_the_hours_as_the_screen_says_them() -> None:
    assert describe(AFTERNOONS, "zh_CN") == "周二至周五 14:00–17:00"
    assert describe(AFTERNOONS, "en") == "Tue–Fri 14:00–17:00"
    two = parse_hours(
        [
            {"days": [6, 7], "from": "09:00", "to": "11:00"},
            {"days": [1, 3], "from": "15:00", "to": "16:00"},
        ]
    )
    assert describe(two, "zh_CN") == "周六、周日 09:00–11:00；周一、周三 15:00–16:00"
    assert describe(two, "en") == "Sat, Sun 09:00–11:00; Mon, Wed 15:00–16:00"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ([{"days": [0], "from": "09:00", "to": "10:00"}], "days"),
        ([{"days": [1, 1], "from": "09:00", "to": "10:00"}], "days"),
        ([{"days": [1], "from": "9:00", "to": "10:00"}], "from"),
        ([{"days": [1], "from": "09:00", "to": "24:00"}], "to"),
        ([{"days": [1], "from": "09:00"}], "to"),
        ([{"days": [True], "from": "09:00", "to": "10:00"}], "days"),
        ([{"days": ["2"], "from": "09:00", "to": "10:00"}], "days"),
        ([], "non-empty"),
        ("9-5", "non-empty"),
    ],
)
def test_bad_hours_are_refused_naming_the_field(raw: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_hours(raw)


def test_an_unknown_time_zone_is_named() -> None:
    with pytest.raises(ValueError, match="Mars/Olympus"):
        shop_zone("Mars/Olympus")
