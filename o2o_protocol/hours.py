"""A campaign's valid hours and the shop's time zone (docs/campaigns.md), for both sides.

Hours are a list of windows `{"days": [1..7], "from": "HH:MM", "to": "HH:MM"}`: ISO
weekdays (1 = Monday) and wall-clock times in the shop's time zone. A window whose `to`
is not after its `from` runs past midnight (`22:00`-`02:00` on Friday covers Saturday's
small hours too). The bridge checks them when a campaign is made; codes carry them; the
kiosk decides offline whether a code is shown within them and says when it is valid.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
#: Weekday names for `describe`, Monday first.
_DAYS = {
    "zh_CN": ("周一", "周二", "周三", "周四", "周五", "周六", "周日"),
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
}
_RANGE = {"zh_CN": "至", "en": "–"}
_JOIN = {"zh_CN": "；", "en": "; "}
#: More windows than any shop's opening hours need; bounds what a code carries.
MAX_WINDOWS = 14


class Window(BaseModel):
    """One window of valid hours, as the API and the codes write it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    #: Strict: `true` or `"2"` is not a weekday (a code's rules must mean one thing).
    days: list[StrictInt] = Field(min_length=1, max_length=7)
    start: StrictStr = Field(alias="from")
    end: StrictStr = Field(alias="to")

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[int]) -> list[int]:
        if any(isinstance(d, bool) or not 1 <= d <= 7 for d in v) or len(set(v)) != len(v):
            raise ValueError("days are ISO weekdays 1 (Monday) to 7 (Sunday), each once")
        return sorted(v)

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.fullmatch(v):
            raise ValueError("times are HH:MM, 00:00 to 23:59")
        return v

    def wire(self) -> dict[str, Any]:
        return {"days": list(self.days), "from": self.start, "to": self.end}

    def covers(self, when: datetime) -> bool:
        """Is `when` (wall-clock time in the shop's zone) inside this window?"""
        start, end, now = _t(self.start), _t(self.end), when.time()
        if start < end:
            return when.isoweekday() in self.days and start <= now < end
        # Past midnight: the evening of a listed day, or the small hours after it.
        if when.isoweekday() in self.days and now >= start:
            return True
        yesterday = (when - timedelta(days=1)).isoweekday()
        return yesterday in self.days and now < end


def _t(hhmm: str) -> time:
    hour, minute = hhmm.split(":")
    return time(int(hour), int(minute))


def parse_hours(raw: Any) -> tuple[Window, ...]:
    """Windows from JSON (an API body or a code's payload); ValueError names the problem."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ValueError("hours must be a non-empty list of {days, from, to}")
    if len(raw) > MAX_WINDOWS:
        raise ValueError(f"at most {MAX_WINDOWS} windows of hours")
    windows = []
    for i, item in enumerate(raw):
        try:
            windows.append(Window.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"hours[{i}].{where}: {err['msg']}".rstrip(".:")) from None
    return tuple(windows)


def is_open(hours: Sequence[Window], when: datetime) -> bool:
    """True when there are no hours (always valid) or `when` falls in one of them."""
    return not hours or any(w.covers(when) for w in hours)


def describe(hours: Iterable[Window], language: str = "zh_CN") -> str:
    """The hours as a customer reads them: "周二至周五 14:00–17:00" / "Tue–Fri 14:00–17:00"."""
    lang = language if language in _DAYS else "en"
    parts = [f"{_day_ranges(w.days, lang)} {w.start}–{w.end}" for w in hours]
    return _JOIN[lang].join(parts)


def _day_ranges(days: Sequence[int], lang: str) -> str:
    names = _DAYS[lang]
    runs: list[list[int]] = []
    for d in sorted(days):
        if runs and d == runs[-1][1] + 1:
            runs[-1][1] = d
        else:
            runs.append([d, d])
    sep = "、" if lang == "zh_CN" else ", "
    out = []
    for a, b in runs:
        if a == b:
            out.append(names[a - 1])
        elif b == a + 1:
            out.append(f"{names[a - 1]}{sep}{names[b - 1]}")
        else:
            out.append(f"{names[a - 1]}{_RANGE[lang]}{names[b - 1]}")
    return sep.join(out)


def shop_zone(name: str | None) -> tzinfo:
    """The shop's time zone: an IANA name, or None for this machine's own zone.

    Raises ValueError for a name the time zone database does not know.
    """
    if not name:
        zone = datetime.now().astimezone().tzinfo
        assert zone is not None
        return zone
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        hint = "use an IANA name such as Asia/Shanghai"
        raise ValueError(f"unknown time zone {name!r}: {hint}") from None
