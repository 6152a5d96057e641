"""The owner's insights (`GET /api/v1/insights`, docs/insights.md): what the shop's own
data says over a range of days, in shop time.

Every figure is counted by when it happened at the kiosk (the event's `ts`) on the shop's
clock (bridge.toml `timezone`), over whole shop days `from`..`to`. The database does the
counting (cloud_bridge/db/insights.py); this module moves the counts into shop days and
hours and puts the answer together, with the forecast and its suggestion
(cloud_bridge/forecast.py).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from cloud_bridge import forecast as forecasting
from cloud_bridge.activities import ActivityService
from cloud_bridge.campaigns import CampaignService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.db.insights import InsightQueries
from cloud_bridge.db.records import format_ts
from o2o_protocol.hours import Window, parse_hours
from o2o_protocol.messages import EventType

#: The longest range one answer covers.
MAX_DAYS = 366
#: The default range: this many days up to today.
DEFAULT_DAYS = 28
#: The forecast learns from at least this many days before `to`, whatever the range.
HISTORY_DAYS = 8 * 7
#: At most this many slow (and busy) hours, and lapsed members, in an answer.
MAX_HOURS = 10
MAX_LAPSED = 100
#: A Monday: weekday-hours are checked against opening hours on this week.
_MONDAY = date(2024, 1, 1)
_DAYS = {
    "zh_CN": ("周一", "周二", "周三", "周四", "周五", "周六", "周日"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}

#: The lists `GET /api/v1/insights.csv?figure=` exports.
CSV_FIGURES = (
    "checkins_by_weekday_hour",
    "daily",
    "slow_hours",
    "lapsed_members",
    "campaigns",
    "activities",
    "preorder_demand",
    "forecast",
)


class RangeError(ValueError):
    """A bad `from`/`to`: the message says which and why (a 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Range:
    """Shop days `first`..`last` (inclusive)."""

    first: date
    last: date

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def dates(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range(self.days)]


def _parse_day(text: str, field: str) -> date:
    if len(text) != 10:
        raise RangeError(field, "a date YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise RangeError(field, "a date YYYY-MM-DD") from None


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _hhmm(hour: int) -> str:
    return f"{hour % 24:02d}:00"


def _windows_of(open_: Sequence[Sequence[bool]]) -> list[Window]:
    """Open weekday-hours as windows: runs of hours per day, days with the same runs
    together."""
    runs: dict[tuple[int, int], list[int]] = defaultdict(list)
    for wd in range(7):
        h = 0
        while h < 24:
            if not open_[wd][h]:
                h += 1
                continue
            first = h
            while h < 24 and open_[wd][h]:
                h += 1
            runs[(first, h)].append(wd + 1)
    return [
        Window.model_validate({"days": days, "from": _hhmm(a), "to": _hhmm(b)})
        for (a, b), days in sorted(runs.items(), key=lambda kv: (kv[1][0], kv[0]))
    ]


class InsightsService:
    """Assembles the insights of one store from its database and its services."""

    def __init__(
        self,
        repo: Repository,
        config: BridgeConfig,
        campaigns: CampaignService,
        activities: ActivityService,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.zone = config.zone()
        self.db = InsightQueries(repo, config.store)
        self.campaigns = campaigns
        self.activities = activities
        self.clock = clock
        self.opening = parse_hours(config.opening_hours) if config.opening_hours else ()

    # -- the range --------------------------------------------------------------------

    def today(self) -> date:
        return datetime.fromtimestamp(self.clock(), UTC).astimezone(self.zone).date()

    def range(self, first: str | None, last: str | None) -> Range:
        """The days asked for: `to` defaults to today (shop time), `from` to 28 days up
        to `to`. RangeError for a bad date, `from` after `to`, or more than 366 days."""
        end = _parse_day(last, "to") if last is not None else self.today()
        start = (
            _parse_day(first, "from")
            if first is not None
            else end - timedelta(days=DEFAULT_DAYS - 1)
        )
        if start > end:
            raise RangeError("from", "from must not be after to")
        if (end - start).days + 1 > MAX_DAYS:
            raise RangeError("from", f"at most {MAX_DAYS} days")
        return Range(start, end)

    def midnight(self, day: date) -> datetime:
        """The start of a shop day, in UTC (wall-clock midnight, even across DST)."""
        return datetime.combine(day, clock_time(), tzinfo=self.zone).astimezone(UTC)

    def local(self, when: datetime) -> datetime:
        return when.astimezone(self.zone)

    # -- the answer -------------------------------------------------------------------

    def insights(self, first: str | None = None, last: str | None = None) -> dict[str, Any]:
        """The whole answer of `GET /api/v1/insights` (docs/insights.md)."""
        r = self.range(first, last)
        start, end = self.midnight(r.first), self.midnight(r.last + timedelta(days=1))
        history_first = min(r.first, r.last - timedelta(days=HISTORY_DAYS - 1))
        hourly, daily = self._hourly(history_first, r)
        grid = [[0] * 24 for _ in range(7)]
        for d, h, n in hourly:
            if r.first <= d <= r.last:
                grid[d.weekday()][h] += n
        weeks_of = [sum(1 for d in r.dates() if d.weekday() == wd) for wd in range(7)]
        open_grid, open_hours = self._open_hours(hourly, r, weeks_of)
        slow, busy = self._slow_and_busy(grid, open_grid, weeks_of)
        members, lapsed, repeat = self._members(r, start, end)
        # Today's count is not final yet: the forecast learns up to yesterday.
        complete = min(r.last, self.today() - timedelta(days=1))
        forecast_rows, backtest = self._forecast(hourly, complete)
        suggestion = self._suggestion(grid, open_hours, r)
        experience = sum(d["checkins"] + d["pickups"] for d in daily)
        attract = sum(d["redemptions"] + d["arrivals"] for d in daily)
        return {
            "from": r.first.isoformat(),
            "to": r.last.isoformat(),
            "timezone": self.config.timezone or str(self.zone),
            "checkins_by_weekday_hour": grid,
            "open_hours": [w.wire() for w in open_hours],
            "open_hours_source": "config" if self.opening else "inferred",
            "slow_hours": slow,
            "busy_hours": busy,
            "daily": [{k: v for k, v in d.items() if k != "arrivals"} for d in daily],
            "repeat_visit_rate": repeat,
            "members": members,
            "lapsed_members": lapsed,
            "points_outstanding": self.db.points_outstanding(),
            "campaigns": self._campaigns(),
            "activities": self._activities(start, end),
            "pickup_lead_time_min": self._pickup_leads(start, end),
            "preorder_demand": self._preorder_demand(start, end),
            "ratings": self._ratings(start, end),
            "funnel": [
                {
                    "stage": "discover",
                    "name": "campaign codes issued",
                    "count": self.db.codes_issued(start, end),
                },
                {
                    "stage": "attract",
                    "name": "coupons redeemed and reservations arrived",
                    "count": attract,
                },
                {
                    "stage": "experience",
                    "name": "counted check-ins and pickups completed",
                    "count": experience,
                },
                {"stage": "retain", "name": "returning members", "count": members["returning"]},
            ],
            "forecast": forecast_rows,
            "backtest": backtest,
            "suggestion": suggestion,
        }

    def _hourly(
        self, history_first: date, r: Range
    ) -> tuple[list[tuple[date, int, int]], list[dict[str, Any]]]:
        """Counted check-ins per shop (date, hour) from `history_first` to `to`, every hour
        (zeros included), and the range's days with their other counts."""
        start = self.midnight(history_first)
        end = self.midnight(r.last + timedelta(days=1))
        checkins: Counter[tuple[date, int]] = Counter()
        by_day: dict[date, Counter[str]] = defaultdict(Counter)
        # Whole UTC hours do when every offset of the zone in the range is whole hours.
        offsets = {
            self.midnight(history_first + timedelta(days=i)).astimezone(self.zone).utcoffset()
            for i in range((r.last - history_first).days + 2)
        }
        whole = all(o is not None and o.total_seconds() % 3600 == 0 for o in offsets)
        shop_hour: dict[datetime, tuple[date, int]] = {}  # each UTC hour converted once
        for type_, at, n in self.db.quarters(start, end, whole_hours=whole):
            where = shop_hour.get(at)
            if where is None:
                local = self.local(at)
                where = shop_hour[at] = (local.date(), local.hour)
            day = where[0]
            if type_ == EventType.CHECKIN.value:
                checkins[where] += n
            if r.first <= day <= r.last:
                by_day[day][type_] += n
        hourly: list[tuple[date, int, int]] = []
        day = history_first
        while day <= r.last:
            hourly.extend((day, h, checkins[(day, h)]) for h in range(24))
            day += timedelta(days=1)
        daily = [
            {
                "date": d.isoformat(),
                "checkins": by_day[d][EventType.CHECKIN.value],
                "redemptions": by_day[d][EventType.COUPON_REDEEMED.value],
                "pickups": by_day[d][EventType.PICKUP_COMPLETED.value],
                "joins": by_day[d][EventType.MEMBER_JOINED.value],
                "arrivals": by_day[d][EventType.RESERVATION_ARRIVED.value],
            }
            for d in r.dates()
        ]
        return hourly, daily

    def _open_hours(
        self, hourly: Sequence[tuple[date, int, int]], r: Range, weeks_of: Sequence[int]
    ) -> tuple[list[list[bool]], list[Window]]:
        """Which weekday-hours the shop is open: those of `opening_hours` (an hour counts
        when the shop is open in any quarter of it); without them, those with check-ins
        in at least a quarter of the weeks of the range."""
        if self.opening:
            grid = []
            for wd in range(7):
                day = datetime.combine(_MONDAY + timedelta(days=wd), clock_time())
                grid.append(
                    [
                        any(
                            w.covers(day.replace(hour=h, minute=m))
                            for w in self.opening
                            for m in (0, 15, 30, 45)
                        )
                        for h in range(24)
                    ]
                )
            return grid, list(self.opening)
        busy_days = [[0] * 24 for _ in range(7)]
        for d, h, n in hourly:
            if n and r.first <= d <= r.last:
                busy_days[d.weekday()][h] += 1
        grid = [
            [weeks_of[wd] > 0 and 4 * busy_days[wd][h] >= weeks_of[wd] for h in range(24)]
            for wd in range(7)
        ]
        return grid, _windows_of(grid)

    @staticmethod
    def _slow_and_busy(
        grid: Sequence[Sequence[int]], open_grid: Sequence[Sequence[bool]], weeks_of: Sequence[int]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        hours = [
            {
                "weekday": wd,
                "hour": h,
                "checkins": grid[wd][h],
                "per_week": round(grid[wd][h] / weeks_of[wd], 2) if weeks_of[wd] else 0.0,
            }
            for wd in range(7)
            for h in range(24)
            if open_grid[wd][h] and weeks_of[wd]
        ]
        slow = sorted(hours, key=lambda x: (x["per_week"], x["weekday"], x["hour"]))
        busy = sorted(hours, key=lambda x: (-x["per_week"], x["weekday"], x["hour"]))
        return slow[:MAX_HOURS], busy[:MAX_HOURS]

    def _members(
        self, r: Range, start: datetime, end: datetime
    ) -> tuple[dict[str, int], list[dict[str, Any]], float]:
        """Visited, new, returning and lapsed members; the lapsed list (most recently seen
        first); the repeat-visit rate."""
        weeks = timedelta(weeks=self.config.lapsed_weeks)
        cutoff = self.midnight(r.last + timedelta(days=1) - weeks)
        got = self.db.member_counts(start, end, cutoff, limit=MAX_LAPSED)
        info = self.db.members(m for m, _, _ in got.lapsed_first)
        counts = {
            "visited": got.visited,
            "new": got.new,
            "returning": got.returning,
            "lapsed": got.lapsed,
        }
        lapsed_list = [
            {
                "id": m,
                "name": info[m].name if m in info else None,
                "last_visit": format_ts(last),
                "visits": visits,
                "points": info[m].points if m in info else 0,
            }
            for m, last, visits in got.lapsed_first
        ]
        repeat = round(got.repeat / got.visited, 4) if got.visited else 0.0
        return counts, lapsed_list, repeat

    @staticmethod
    def _forecast(
        hourly: Sequence[tuple[date, int, int]], complete: date
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The 7 days after `to` (forecast.py), learnt from the days up to `complete` (the
        last whole shop day), and its backtest on past weeks."""
        days, test = forecasting.forecast(hourly, days=7, complete=complete)
        rows = [
            {
                "date": d.date.isoformat(),
                "checkins": round(d.checkins, 2),
                "low": round(d.low, 2),
                "high": round(d.high, 2),
                "by_hour": [round(x, 3) for x in d.by_hour],
            }
            for d in days
        ]
        backtest = {
            "mae": test.mae,
            "seasonal_naive_mae": test.seasonal_naive_mae,
            "weeks": test.weeks,
            "method": test.method,
        }
        return rows, backtest

    def _suggestion(
        self, grid: Sequence[Sequence[int]], open_hours: Sequence[Window], r: Range
    ) -> dict[str, Any] | None:
        """A flash sale for the quietest open hour worth one (forecast.suggest), with the
        campaign that `POST /api/v1/insights/suggestion` creates."""
        found = forecasting.suggest(grid, open_hours, r.days / 7)
        if found is None:
            return None
        wd, hour = found.weekday, found.hour
        start, stop = _hhmm(hour), _hhmm(hour + 1)
        ends = self.today() + timedelta(days=DEFAULT_DAYS)
        return {
            "weekday": wd,
            "hour": hour,
            "from": start,
            "to": stop,
            "text": {
                "zh_CN": f"{_DAYS['zh_CN'][wd]} {start}–{stop} 客流最少：可以做一次限时特惠",
                "en": f"{_DAYS['en'][wd]} {start}–{stop} is the quietest open hour: "
                "a flash sale could fill it",
            },
            "campaign": {
                "name": f"限时特惠 {_DAYS['zh_CN'][wd]} {start}–{stop}",
                "kind": "flash_sale",
                "value": "9折 / 10% off",
                "quantity": 20,
                "hours": [{"days": [wd + 1], "from": start, "to": stop}],
                "ends": ends.isoformat(),
            },
        }

    def _campaigns(self) -> list[dict[str, Any]]:
        """Each campaign's codes issued and redeemed (all of its life, as `GET
        /api/v1/campaigns` counts them: a visit card once however often it was used) and
        their ratio."""
        redeemed = self.db.campaign_redemptions()
        out = []
        for c in self.campaigns.campaigns():
            uses, codes = redeemed.get(c.id, (0, 0))
            n = codes if c.kind == "visit_card" else uses
            out.append(
                {
                    "id": c.id,
                    "name": c.name,
                    "kind": c.kind,
                    "issued": c.issued,
                    "redeemed": n,
                    "conversion": _ratio(n, c.issued),
                }
            )
        return out

    def _activities(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """The activities held in the range: places taken, tickets scanned at the door."""
        return [
            {
                "id": a["id"],
                "title": a["title"],
                "at": a["at"],
                "signed_up": a["signed_up"],
                "attended": a["attended"],
                "conversion": _ratio(a["attended"], a["signed_up"]),
            }
            for a in self.activities.listing()
            if start <= datetime.fromisoformat(a["at"].replace("Z", "+00:00")) < end
        ]

    def _pickup_leads(self, start: datetime, end: datetime) -> dict[str, Any]:
        leads = self.db.pickup_lead_minutes(start, end)
        if not leads:
            return {"count": 0, "median": None, "p90": None}
        return {
            "count": len(leads),
            "median": round(_percentile(leads, 0.5), 1),
            "p90": round(_percentile(leads, 0.9), 1),
        }

    def _preorder_demand(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Items of the preorders queued in the range, by weekday (shop time) of the
        order: each string item counts 1, an {"name"|"item", "qty"} its quantity."""
        demand: Counter[tuple[str, int]] = Counter()
        for at, data in self.db.preorders(start, end):
            wd = self.local(at).weekday()
            for item in data.get("items") or ():
                name, qty = _item(item)
                if name is not None:
                    demand[(name, wd)] += qty
        return [
            {"item": item, "weekday": wd, "count": n} for (item, wd), n in sorted(demand.items())
        ]

    def _ratings(self, start: datetime, end: datetime) -> dict[str, Any]:
        summary = self.db.ratings(start, end)
        return {
            "count": summary["count"],
            "average": summary["average"],
            "by_subject": summary["by_subject"],
        }


def _item(item: Any) -> tuple[str | None, int]:
    """A preorder item's name and quantity; (None, 0) for what is neither."""
    if isinstance(item, str):
        return (item.strip() or None), 1
    if isinstance(item, dict):
        name = item.get("name", item.get("item"))
        qty = item.get("qty", 1)
        if not isinstance(name, str) or not name.strip():
            return None, 0
        if isinstance(qty, bool) or not isinstance(qty, int) or qty < 1:
            qty = 1
        return name.strip(), qty
    return None, 0


def csv_rows(answer: dict[str, Any], figure: str) -> tuple[list[str], list[list[Any]]]:
    """One list figure of an answer as a header and rows (`insights.csv`)."""
    if figure == "checkins_by_weekday_hour":
        header = ["weekday", *[str(h) for h in range(24)]]
        return header, [[wd, *row] for wd, row in enumerate(answer[figure])]
    items: list[dict[str, Any]] = answer[figure]
    if figure == "forecast":
        header = ["date", "checkins", "low", "high", *[f"h{h:02d}" for h in range(24)]]
        return header, [
            [f["date"], f["checkins"], f["low"], f["high"], *f["by_hour"]] for f in items
        ]
    columns = {
        "daily": ["date", "checkins", "redemptions", "pickups", "joins"],
        "slow_hours": ["weekday", "hour", "checkins", "per_week"],
        "lapsed_members": ["id", "name", "last_visit", "visits", "points"],
        "campaigns": ["id", "name", "kind", "issued", "redeemed", "conversion"],
        "activities": ["id", "title", "at", "signed_up", "attended", "conversion"],
        "preorder_demand": ["item", "weekday", "count"],
    }[figure]
    return columns, [[i[c] for c in columns] for i in items]


__all__ = ["CSV_FIGURES", "InsightsService", "RangeError", "csv_rows"]
