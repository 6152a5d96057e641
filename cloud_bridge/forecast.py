"""The next days' check-ins, checked against the seasonal naive forecast; the slot to fill.

Pure (no I/O, no database, plain Python): the insights service hands in hourly counts in
shop time and shows what comes out (docs/insights.md, "The forecast").

The forecast is meant to be explained to a shop owner in one breath:

- **weekly pattern**: each weekday-hour's share of its week, pooled over the last
  `PATTERN_WEEKS` whole weeks (a closed day has a share of 0, so it stays closed);
- **recent level**: the last `LEVEL_WEEKS` weekly totals, the most recent weighing most
  (each week before counts `LEVEL_DECAY` as much);
- **trend**: the least-squares slope of the last `TREND_WEEKS` weekly totals, carried
  forward damped (`TREND_DAMPING` of it per week ahead) so a few good weeks are not
  extrapolated for ever.

A day's forecast is (level + trend) × that weekday's hours' shares, never below zero.

It is checked on the last `BACKTEST_WEEKS` whole weeks, held out one at a time (rolling
origin: fit on the weeks before, forecast the next 7 days), against the seasonal naive
forecast (the same hour last week). Whichever has the lower mean daily error there is the
forecast shown, and `Backtest.method` says which and why. The band (`low`/`high`) spans
the 10th to 90th percentile of that method's held-out daily errors, scaled to each day by
the square root of its forecast (counts of people who arrive on their own vary so).

A history shorter than two weeks cannot be checked: with one whole week the forecast is
that week again (seasonal naive), with less the mean day of the days seen, and the band is
the Poisson one (± 1.28 √forecast, also about 80 %).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from statistics import median

from o2o_protocol.hours import Window

#: Whole weeks pooled for the weekly pattern (each weekday-hour's share of its week).
PATTERN_WEEKS = 8
#: Whole weeks in the recent level, and how much each week before the last counts.
LEVEL_WEEKS = 4
LEVEL_DECAY = 0.7
#: Whole weeks the trend is fitted on (a straight line through the weekly totals), and the
#: share of it carried into each week ahead.
TREND_WEEKS = 8
TREND_DAMPING = 0.5
#: Whole weeks held out one at a time in the backtest (the last ones).
BACKTEST_WEEKS = 8
#: The band: these quantiles of the held-out errors (an 80 % band) ...
BAND_QUANTILES = (0.1, 0.9)
#: ... or, with no backtest, ± this many standard deviations of a Poisson count.
POISSON_Z = 1.2816
#: An open hour worth a flash sale had at least this many check-ins a week on average ...
MIN_PER_WEEK = 0.5
#: ... and at least this share of the typical (median) open hour's.
MIN_SHARE_OF_TYPICAL = 0.1

_HOURS = 24
_WEEK = 7
#: A Monday: the weekday-hours of `suggest` are tested against the windows on this week.
_A_MONDAY = datetime(2024, 1, 1)


@dataclass(frozen=True)
class DayForecast:
    """One forecast day in shop time: check-ins, an 80 % band, and the 24 hours' share."""

    date: date
    checkins: float
    low: float
    high: float
    by_hour: tuple[float, ...]  # 24, summing to `checkins`


@dataclass(frozen=True)
class Backtest:
    """How the forecast did on held-out past weeks, beside the seasonal naive forecast.

    `mae` is the mean absolute error per day (check-ins) of the method shown; None when
    the history is too short to hold out a week.
    """

    mae: float | None
    seasonal_naive_mae: float | None
    weeks: int
    method: str


@dataclass(frozen=True)
class Suggestion:
    """The quietest open hour worth a flash sale: weekday 0 = Monday, hour 0-23."""

    weekday: int
    hour: int


# -- the forecast ---------------------------------------------------------------------

Day = tuple[float, ...]  # 24 hourly counts


def forecast(
    hourly: Sequence[tuple[date, int, int]], *, days: int = 7, complete: date | None = None
) -> tuple[list[DayForecast], Backtest]:
    """The `days` days after the last date of `hourly`, and how the method did before.

    `hourly` is (shop-local date, hour 0-23, check-ins) for every hour of the history,
    oldest first; missing hours and days count as zero. `complete`: the last day whose
    count is final (yesterday, when `hourly` runs to today): the days after it are left
    out of what is learnt (today so far is not a quiet day), the forecast starts the day
    after it, and only its `days` days after `hourly` are returned. An empty history
    forecasts nothing (there is no last date to forecast from).
    """
    if days < 0:
        raise ValueError("days must be >= 0")
    first, history = _days(hourly)
    if first is None:
        return [], Backtest(None, None, 0, "no history: nothing to forecast")
    end = first + timedelta(days=len(history) - 1)
    skip = 0
    if complete is not None and complete < end:
        skip = (end - complete).days
        history = history[: max(0, len(history) - skip)]
        if not history:
            return [], Backtest(None, None, 0, "no history: no whole day seen yet")
    out, test = _forecast(first, history, days + skip)
    return out[skip:], test


def _forecast(first: date, history: list[Day], days: int) -> tuple[list[DayForecast], Backtest]:
    """The `days` days after `history` (whole days from `first`), and its backtest."""
    last = first + timedelta(days=len(history) - 1)
    # Days before the shop's first check-in are not quiet days but no data: a shop five
    # weeks old asked about eight would otherwise be backtested on weeks it was closed.
    opened = next((i for i, d in enumerate(history) if any(d)), 0)
    history = history[opened:]
    ahead = [last + timedelta(days=k) for k in range(1, days + 1)]
    weeks = len(history) // _WEEK

    if weeks < 1:
        mean_day = tuple(sum(d[h] for d in history) / len(history) for h in range(_HOURS))
        shown = [mean_day] * days
        method = (
            f"mean day: {len(history)} day(s) of history are too few for a weekly pattern, "
            "so every day ahead is forecast as the average day seen; not backtested "
            "(needs two whole weeks); band ± 1.28 √forecast"
        )
        return _result(ahead, shown, None), Backtest(None, None, 0, method)

    if weeks < 2:
        method = (
            "seasonal naive: one whole week of history, so each day ahead is forecast as the "
            "same day last week; not backtested (needs two whole weeks); band ± 1.28 √forecast"
        )
        shown = _seasonal_naive(history, days)
        return _result(ahead, shown, None), Backtest(None, None, 0, method)

    held_out = min(BACKTEST_WEEKS, weeks - 1)
    model_err: list[tuple[float, float]] = []  # (forecast, actual) per held-out day
    naive_err: list[tuple[float, float]] = []
    for k in range(held_out, 0, -1):
        cut = len(history) - _WEEK * k
        past, actual = history[:cut], history[cut : cut + _WEEK]
        model_days = _model(past, first + timedelta(days=cut - 1), _WEEK)
        naive_days = _seasonal_naive(past, _WEEK)
        for m, n, a in zip(model_days, naive_days, actual, strict=True):
            model_err.append((sum(m), sum(a)))
            naive_err.append((sum(n), sum(a)))

    model_mae = _mae(model_err)
    naive_mae = _mae(naive_err)
    recipe = (
        f"weekly pattern of the last {min(weeks, PATTERN_WEEKS)} week(s) × recent level "
        f"(last {min(weeks, LEVEL_WEEKS)} weekly totals, the latest weighing most) + damped "
        f"trend (slope of the last {min(weeks, TREND_WEEKS)} weekly totals, "
        f"{TREND_DAMPING:g} of it a week ahead)"
    )
    check = (
        f"backtested on the last {held_out} week(s), each held out and forecast from the "
        f"weeks before: mean daily error {model_mae:.1f} check-ins against "
        f"{naive_mae:.1f} for the seasonal naive forecast (same hour last week)"
    )
    if model_mae <= naive_mae:
        shown = _model(history, last, days)
        errors, mae = model_err, model_mae
        method = f"{recipe}; {check}; band: 10th-90th percentile of those errors"
    else:
        shown = _seasonal_naive(history, days)
        errors, mae = naive_err, naive_mae
        method = (
            f"seasonal naive (same hour last week), because it did better than the "
            f"{recipe}; {check}; band: 10th-90th percentile of the seasonal naive's errors"
        )
    return _result(ahead, shown, errors), Backtest(mae, naive_mae, held_out, method)


def _days(hourly: Sequence[tuple[date, int, int]]) -> tuple[date | None, list[Day]]:
    """The history as whole days of 24 counts from its first date to its last."""
    if not hourly:
        return None, []
    first = min(row[0] for row in hourly)
    last = max(row[0] for row in hourly)
    grid = [[0.0] * _HOURS for _ in range((last - first).days + 1)]
    for day, hour, count in hourly:
        if not 0 <= hour < _HOURS:
            raise ValueError(f"hour {hour} on {day} is not 0-23")
        if count < 0:
            raise ValueError(f"negative check-ins ({count}) on {day} {hour}:00")
        grid[(day - first).days][hour] += count
    return first, [tuple(d) for d in grid]


def _weekly_totals(history: Sequence[Day]) -> list[float]:
    """Totals of the whole weeks, aligned to end on the last day, oldest first."""
    n = len(history) // _WEEK
    start = len(history) - n * _WEEK
    return [
        sum(sum(d) for d in history[start + i * _WEEK : start + (i + 1) * _WEEK]) for i in range(n)
    ]


def _model(history: Sequence[Day], last: date, days: int) -> list[Day]:
    """Pattern × (level + damped trend) for the `days` days after `history`, whose last
    day is `last` (>= 1 whole week)."""
    history = history[-_WEEK * max(PATTERN_WEEKS, LEVEL_WEEKS, TREND_WEEKS) :]  # all it uses
    totals = _weekly_totals(history)
    # Weekly pattern: each weekday-hour's share of the pooled recent weeks.
    span = history[len(history) - _WEEK * min(len(totals), PATTERN_WEEKS) :]
    share = [[0.0] * _HOURS for _ in range(_WEEK)]
    pooled = sum(sum(d) for d in span)
    if pooled > 0:
        for age, d in enumerate(reversed(span)):
            row = share[(last - timedelta(days=age)).weekday()]
            for h in range(_HOURS):
                row[h] += d[h] / pooled
    # Recent level: exponentially weighted mean of the last weekly totals.
    recent = totals[-LEVEL_WEEKS:][::-1]  # latest first
    weights = [LEVEL_DECAY**age for age in range(len(recent))]
    level = sum(w * t for w, t in zip(weights, recent, strict=True)) / sum(weights)
    lag = sum(w * age for age, w in enumerate(weights)) / sum(weights)  # weeks behind now
    slope = _slope(totals[-TREND_WEEKS:])
    out = []
    for k in range(days):
        ahead = k // _WEEK + 1
        carried = lag + sum(TREND_DAMPING**i for i in range(1, ahead + 1))
        week_total = max(0.0, level + slope * carried)
        weekday = (last + timedelta(days=k + 1)).weekday()
        out.append(tuple(week_total * s for s in share[weekday]))
    return out


def _slope(totals: Sequence[float]) -> float:
    """Least-squares slope per week; 0 with fewer than three weeks (two points are noise)."""
    n = len(totals)
    if n < 3:
        return 0.0
    mx = (n - 1) / 2
    my = sum(totals) / n
    sxx = sum((x - mx) ** 2 for x in range(n))
    return sum((x - mx) * (y - my) for x, y in enumerate(totals)) / sxx


def _seasonal_naive(history: Sequence[Day], days: int) -> list[Day]:
    """The same hour last week, repeated for as many weeks as asked."""
    week = history[-_WEEK:]
    return [week[k % _WEEK] for k in range(days)]


def _mae(pairs: Sequence[tuple[float, float]]) -> float:
    return sum(abs(f - a) for f, a in pairs) / len(pairs)


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (as numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _result(
    dates: Sequence[date], shown: Sequence[Day], errors: Sequence[tuple[float, float]] | None
) -> list[DayForecast]:
    """Days with their band: scaled held-out errors, or the Poisson band without them."""
    lo_q = hi_q = None
    if errors:
        # A day forecast at zero and seen at zero (closed) says nothing about the noise.
        scaled = [(a - f) / math.sqrt(max(f, 1.0)) for f, a in errors if f > 0 or a > 0]
        if scaled:
            lo_q = min(0.0, _quantile(scaled, BAND_QUANTILES[0]))
            hi_q = max(0.0, _quantile(scaled, BAND_QUANTILES[1]))
    out = []
    for day, hours in zip(dates, shown, strict=True):
        by_hour = tuple(max(0.0, h) for h in hours)
        total = sum(by_hour)
        if total == 0:
            # Nobody on this weekday in the weeks learnt from: taken as closed.
            low = high = 0.0
        elif lo_q is not None and hi_q is not None:
            spread = math.sqrt(max(total, 1.0))
            low, high = max(0.0, total + lo_q * spread), total + hi_q * spread
        else:
            spread = POISSON_Z * math.sqrt(total)
            low, high = max(0.0, total - spread), total + spread
        out.append(DayForecast(day, total, low, high, by_hour))
    return out


# -- the suggestion -------------------------------------------------------------------


def suggest(
    by_weekday_hour: Sequence[Sequence[int]], open_hours: Sequence[Window], weeks: float
) -> Suggestion | None:
    """The quietest open weekday-hour that still has people to reach, or None.

    A flash sale fills a quiet hour with people who would come anyway, or pass by; an hour
    in which the shop saw next to nobody (fewer than `MIN_PER_WEEK` check-ins a week, or
    under `MIN_SHARE_OF_TYPICAL` of the median open hour's) has nobody to reach: the door
    is open but the street is empty, or the staff open late. Such dead hours are passed
    over. An hour is open when its whole 60 minutes are inside `open_hours`; with no
    `open_hours` every hour is. Less than one week seen gives no suggestion (one day of
    each weekday is no pattern). Ties go to the earliest in the week.
    """
    if weeks < 1:
        return None
    rate = {
        (wd, h): by_weekday_hour[wd][h] / weeks
        for wd in range(_WEEK)
        for h in range(_HOURS)
        if _open(open_hours, wd, h)
    }
    if not rate:
        return None
    typical = median(rate.values())
    floor = max(MIN_PER_WEEK, MIN_SHARE_OF_TYPICAL * typical)
    alive = [(r, wd, h) for (wd, h), r in rate.items() if r >= floor]
    if not alive:
        return None
    _, wd, h = min(alive)
    return Suggestion(wd, h)


def _open(windows: Sequence[Window], weekday: int, hour: int) -> bool:
    """Is the shop open for the whole hour (its first and its last minute)?"""
    if not windows:
        return True
    start = _A_MONDAY + timedelta(days=weekday, hours=hour)
    end = start + timedelta(minutes=59)
    return any(w.covers(start) for w in windows) and any(w.covers(end) for w in windows)
