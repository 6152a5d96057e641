"""Stand-in for the forecast engineer's module (seasonal naive), same interface; replaced
when the `forecast` branch is merged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from o2o_protocol.hours import Window


@dataclass(frozen=True)
class DayForecast:
    date: date
    checkins: float
    low: float
    high: float
    by_hour: tuple[float, ...]


@dataclass(frozen=True)
class Backtest:
    mae: float | None
    seasonal_naive_mae: float | None
    weeks: int
    method: str


@dataclass(frozen=True)
class Suggestion:
    weekday: int
    hour: int


def forecast(
    hourly: Sequence[tuple[date, int, int]], *, days: int = 7
) -> tuple[list[DayForecast], Backtest]:
    """Same hour last week."""
    last: dict[tuple[int, int], int] = {}
    end = hourly[-1][0] if hourly else date.today()
    for d, h, n in hourly:
        last[(d.weekday(), h)] = n
    out = []
    for i in range(1, days + 1):
        d = end + timedelta(days=i)
        hours = tuple(float(last.get((d.weekday(), h), 0)) for h in range(24))
        total = sum(hours)
        out.append(DayForecast(d, total, total, total, hours))
    return out, Backtest(None, None, 0, "seasonal naive (stand-in)")


def suggest(
    by_weekday_hour: Sequence[Sequence[int]], open_hours: Sequence[Window], weeks: float
) -> Suggestion | None:
    """The quietest open hour."""
    base = date(2024, 1, 1)  # a Monday
    best: tuple[int, int, int] | None = None
    for wd in range(7):
        for h in range(24):
            when = datetime.combine(base + timedelta(days=wd), datetime.min.time()).replace(hour=h)
            if not any(w.covers(when) for w in open_hours):
                continue
            n = by_weekday_hour[wd][h]
            if best is None or n < best[0]:
                best = (n, wd, h)
    return None if best is None else Suggestion(best[1], best[2])
