"""The forecast and the suggested slot (cloud_bridge/forecast.py) on traffic we made up.

The series have a known weekly pattern (closed on Mondays, open 08:00-18:00, a lunch peak,
busier weekends, a quiet Tuesday 14:00), Poisson noise as people arriving on their own,
and a trend; so the truth the forecast should find is known, and so is the seasonal naive
forecast (the same hour last week) it has to beat.
"""

from __future__ import annotations

import math
import random
from datetime import date, timedelta

import pytest

from cloud_bridge.forecast import Suggestion, forecast, suggest
from o2o_protocol.hours import parse_hours

START = date(2025, 1, 6)  # a Monday
OPEN = parse_hours([{"days": [2, 3, 4, 5, 6, 7], "from": "08:00", "to": "18:00"}])
QUIET = (1, 14)  # Tuesday 14:00


def expected(day: date, hour: int, *, per_open_hour: float, growth: float) -> float:
    """The mean check-ins of one shop hour: the pattern times the level on that day."""
    wd = day.weekday()
    if wd == 0 or not 8 <= hour < 18:
        return 0.0
    lam = per_open_hour * (1.5 if wd >= 5 else 1.0) * (1.6 if hour in (12, 13) else 1.0)
    if (wd, hour) == QUIET:
        lam *= 0.25
    return lam * (1 + growth) ** ((day - START).days / 7)


def poisson(rng: random.Random, lam: float) -> int:
    """Knuth's: how many arrive in an hour when `lam` do on average."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def shop(
    weeks: int, *, seed: int = 1, per_open_hour: float = 8.0, growth: float = 0.0
) -> list[tuple[date, int, int]]:
    rng = random.Random(seed)
    return [
        (day, h, poisson(rng, expected(day, h, per_open_hour=per_open_hour, growth=growth)))
        for day in (START + timedelta(days=d) for d in range(weeks * 7))
        for h in range(24)
    ]


def daily(hourly: list[tuple[date, int, int]]) -> dict[date, int]:
    out: dict[date, int] = {}
    for day, _, n in hourly:
        out[day] = out.get(day, 0) + n
    return out


# -- the forecast ---------------------------------------------------------------------


@pytest.mark.parametrize("growth", [0.0, 0.03, -0.03])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_beats_the_seasonal_naive_on_held_out_weeks(seed: int, growth: float) -> None:
    history = shop(20, seed=seed, growth=growth)
    _, test = forecast(history)

    assert test.weeks == 8
    assert test.mae is not None and test.seasonal_naive_mae is not None
    assert test.mae < test.seasonal_naive_mae
    assert test.method.startswith("weekly pattern")
    assert "last 8 week(s)" in test.method
    # The seasonal naive's error is what the owner could check by hand: each of the last
    # 8 weeks' days against the same day the week before.
    totals = daily(history)
    held_out = sorted(totals)[-56:]
    naive = [abs(totals[d - timedelta(days=7)] - totals[d]) for d in held_out]
    assert test.seasonal_naive_mae == pytest.approx(sum(naive) / len(naive))


def test_on_average_a_fifth_better_than_the_seasonal_naive() -> None:
    """Noise alone costs the seasonal naive √2 times the day's own spread; the weekly
    pattern and the level average it over weeks, so the forecast comes close to the
    spread itself."""
    ratios = []
    for seed in range(1, 9):
        _, test = forecast(shop(20, seed=seed, growth=0.02))
        assert test.mae is not None and test.seasonal_naive_mae is not None
        ratios.append(test.mae / test.seasonal_naive_mae)
    assert sum(ratios) / len(ratios) < 0.85


def test_the_next_week_is_close_to_the_truth_and_keeps_the_pattern() -> None:
    history = shop(20, growth=0.03)
    days, _ = forecast(history)

    last = START + timedelta(days=20 * 7 - 1)
    assert [d.date for d in days] == [last + timedelta(days=k) for k in range(1, 8)]
    for d in days:
        truth = [expected(d.date, h, per_open_hour=8.0, growth=0.03) for h in range(24)]
        assert len(d.by_hour) == 24
        assert sum(d.by_hour) == pytest.approx(d.checkins)
        assert d.low <= d.checkins <= d.high
        if d.date.weekday() == 0:  # closed on Mondays: nobody, and no band
            assert (d.checkins, d.low, d.high) == (0, 0, 0)
            continue
        assert d.checkins == pytest.approx(sum(truth), rel=0.1)
        assert all(d.by_hour[h] == 0 for h in range(24) if not 8 <= h < 18)
        assert d.low < sum(truth) < d.high
    tuesday = next(d for d in days if d.date.weekday() == 1)
    assert min(range(8, 18), key=lambda h: tuesday.by_hour[h]) == QUIET[1]


def test_the_band_holds_most_of_the_days_that_come() -> None:
    """An 80 % band from the held-out errors: the days after it mostly fall inside."""
    inside = total = 0
    for seed in range(1, 7):
        future = shop(21, seed=seed)
        days, _ = forecast(future[: 20 * 7 * 24])
        seen = daily(future)
        for d in days:
            if d.checkins:
                total += 1
                inside += d.low <= seen[d.date] <= d.high
    assert inside / total >= 0.65


def test_longer_horizons_follow_the_weekly_pattern() -> None:
    days, _ = forecast(shop(12), days=14)
    assert len(days) == 14
    for first, second in zip(days[:7], days[7:], strict=True):
        assert first.date.weekday() == second.date.weekday()
        assert second.checkins == pytest.approx(first.checkins, rel=0.1, abs=0.5)


def test_when_the_seasonal_naive_did_better_it_is_the_forecast_shown() -> None:
    """A step change (the shop tripled its traffic) that a level over weeks lags behind,
    but last week already shows: the check picks the seasonal naive and says why."""
    history = []
    for d in range(18 * 7):
        day = START + timedelta(days=d)
        n = 3 if d < 10 * 7 else 9
        history += [(day, h, n if 8 <= h < 18 else 0) for h in range(24)]
    days, test = forecast(history)

    assert test.method.startswith("seasonal naive (same hour last week), because it did better")
    assert test.mae == test.seasonal_naive_mae
    assert [d.checkins for d in days] == [90.0] * 7
    assert all(d.by_hour == tuple(9.0 if 8 <= h < 18 else 0.0 for h in range(24)) for d in days)


def test_never_negative_when_the_trend_heads_below_zero() -> None:
    days, test = forecast(shop(12, growth=-0.35, per_open_hour=20))
    assert test.mae is not None
    for d in days:
        assert d.checkins >= 0 and d.low >= 0 and all(h >= 0 for h in d.by_hour)


def test_a_shop_that_saw_nobody_forecasts_nobody() -> None:
    history = [(START + timedelta(days=d), h, 0) for d in range(5 * 7) for h in range(24)]
    days, test = forecast(history)
    assert [(d.checkins, d.low, d.high) for d in days] == [(0, 0, 0)] * 7
    assert (test.mae, test.seasonal_naive_mae, test.weeks) == (0, 0, 4)


def test_one_week_and_a_bit_is_the_seasonal_naive_and_says_so() -> None:
    history = shop(2)[: 10 * 24]  # 10 days
    days, test = forecast(history)

    assert (test.mae, test.seasonal_naive_mae, test.weeks) == (None, None, 0)
    assert test.method.startswith("seasonal naive: one whole week of history")
    by_day = {d: [n for day, _, n in history if day == d] for d in daily(history)}
    for d in days:
        assert list(d.by_hour) == by_day[d.date - timedelta(days=7)]
        assert d.low <= d.checkins <= d.high
    monday = next(d for d in days if d.date.weekday() == 0)
    assert (monday.checkins, monday.low, monday.high) == (0, 0, 0)


def test_a_few_days_are_the_mean_day_and_say_so() -> None:
    history = shop(1)[24 : 4 * 24]  # Tuesday to Thursday
    days, test = forecast(history, days=3)

    assert test.method.startswith("mean day: 3 day(s) of history")
    assert test.mae is None
    mean = [sum(n for _, h, n in history if h == hour) / 3 for hour in range(24)]
    assert [d.date for d in days] == [date(2025, 1, 10), date(2025, 1, 11), date(2025, 1, 12)]
    assert all(list(d.by_hour) == pytest.approx(mean) for d in days)


def test_no_history_forecasts_nothing() -> None:
    days, test = forecast([])
    assert days == []
    assert (test.mae, test.weeks) == (None, 0)
    assert "no history" in test.method


def test_missing_hours_count_as_zero_and_bad_rows_are_refused() -> None:
    # 13 days: the first guest at midnight on day one, then nobody but 4 one Wednesday 09:00.
    ends = [(START, 0, 1), (START + timedelta(days=12), 0, 0)]
    history = [*ends, (START + timedelta(days=9), 9, 4)]
    days, test = forecast(history)
    assert test.method.startswith("seasonal naive: one whole week")
    assert [d.checkins for d in days] == [0, 0, 0, 4, 0, 0, 0]
    assert days[3].date == START + timedelta(days=16)
    assert days[3].by_hour[9] == 4
    with pytest.raises(ValueError, match="hour 24"):
        forecast([(START, 24, 1)])
    with pytest.raises(ValueError, match="negative"):
        forecast([(START, 9, -1)])


# -- the suggestion -------------------------------------------------------------------


def grid_of(hourly: list[tuple[date, int, int]]) -> list[list[int]]:
    grid = [[0] * 24 for _ in range(7)]
    for day, h, n in hourly:
        grid[day.weekday()][h] += n
    return grid


def test_suggests_the_known_quiet_open_hour() -> None:
    grid = grid_of(shop(4))
    assert suggest(grid, OPEN, 4) == Suggestion(*QUIET)


def test_never_a_closed_hour_however_quiet() -> None:
    grid = grid_of(shop(4))
    grid[0][10] = 2  # staff on a closed Monday
    grid[2][19] = 3  # a few after closing on Wednesday
    grid[3][7] = 1  # one before opening on Thursday
    assert suggest(grid, OPEN, 4) == Suggestion(*QUIET)
    # With opening hours from 08:30 the 08:00 hour is not wholly open: not suggested.
    grid[4][8] = 4  # Friday 08:00, once a week: quieter than Tuesday 14:00
    assert suggest(grid, OPEN, 4) == Suggestion(4, 8)
    half = parse_hours([{"days": [2, 3, 4, 5, 6, 7], "from": "08:30", "to": "18:00"}])
    assert suggest(grid, half, 4) == Suggestion(*QUIET)


def test_a_dead_open_hour_is_passed_over() -> None:
    """Nobody at 08:00 on Wednesdays in four weeks: no one to reach with a sale."""
    grid = grid_of(shop(4))
    grid[2][8] = 0
    grid[3][8] = 1  # once in four weeks: under one every two weeks, dead too
    assert suggest(grid, OPEN, 4) == Suggestion(*QUIET)
    # In a busy shop an hour with a tenth of the typical hour's people is dead as well.
    busy = grid_of(shop(4, per_open_hour=60))
    busy[5][17] = 20  # 5 a week against about 90 in a typical open hour
    assert suggest(busy, OPEN, 4) == Suggestion(*QUIET)


def test_over_midnight_and_without_opening_hours() -> None:
    grid = [[0] * 24 for _ in range(7)]
    for wd in range(7):
        for h in (22, 23, 0, 1):
            grid[wd][h] = 40
    grid[5][1] = 8  # Saturday 01:00, the small hours after Friday evening
    grid[6][3] = 30  # after closing
    late = parse_hours([{"days": [5], "from": "22:00", "to": "02:00"}])
    assert suggest(grid, late, 4) == Suggestion(5, 1)
    assert suggest(grid, (), 4) == Suggestion(5, 1)  # every hour open: the dead ones skipped


def test_no_suggestion_without_a_week_or_anyone_to_reach() -> None:
    grid = grid_of(shop(4))
    assert suggest(grid, OPEN, 0.5) is None
    assert suggest([[0] * 24 for _ in range(7)], OPEN, 4) is None


def test_weeks_before_the_shop_opened_are_no_data_not_quiet_weeks() -> None:
    """A shop five weeks old, asked about eight: the three weeks before its first guest
    must not be backtested as days nobody came (they would blow the band up)."""
    young = [
        (day + timedelta(days=3 * 7), h, n) for day, h, n in shop(5, seed=4)
    ]  # the same five weeks, three weeks later
    empty = [(START + timedelta(days=d), h, 0) for d in range(3 * 7) for h in range(24)]
    padded_days, padded_test = forecast(empty + young)
    alone_days, alone_test = forecast(young)
    assert padded_days == alone_days and padded_test == alone_test
    assert all(d.high <= 2 * d.checkins + 10 for d in padded_days if d.checkins)


def test_today_so_far_is_not_learnt_from() -> None:
    """Asked on a Tuesday at 11:00, the history ends with today's first hours: the
    forecast learns from the whole days up to yesterday, and forecasts the 7 days after
    today as if asked last night (today's few check-ins are not a quiet day)."""
    today = START + timedelta(days=10 * 7 + 1)  # a Tuesday
    history = [row for row in shop(11, seed=6) if row[0] < today]
    so_far = [(today, h, 9 if 8 <= h < 11 else 0) for h in range(24)]
    days, test = forecast(history + so_far, complete=today - timedelta(days=1))
    last_night, test_then = forecast(history, days=8)
    assert [d.date for d in days] == [today + timedelta(days=k) for k in range(1, 8)]
    assert days == last_night[1:] and test == test_then
    # Learnt from as a whole day, today would have pulled the next Tuesday down.
    naive_days, _ = forecast(history + so_far)
    assert naive_days[6].checkins < days[6].checkins
    # Nothing whole yet: nothing learnt.
    assert forecast(so_far, complete=today - timedelta(days=1))[0] == []
