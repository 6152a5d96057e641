"""What the result screen says about an outcome: plain data, no Kivy.

Kept apart from the widgets so every event type and rejection reason can be checked
for a customer-friendly message without opening a window.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kiosk.i18n import Messages
from o2o_protocol.hours import Window, parse_hours
from o2o_protocol.hours import describe as hours_text
from o2o_protocol.messages import EventType

#: Not events, UI states: the scan could not be recorded at all (e.g. the disk is full);
#: a locker is open for staff to load an order (recorded once the door closes).
ERROR = "error"
LOADING = "locker.opening"


@dataclass(frozen=True)
class Outcome:
    """A recorded scan as the screens see it: the event type, the reason, the data, and
    the event's id (None for UI states), which a rating names as the event it rates."""

    event_type: str
    reason: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    event_id: str | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None and self.event_type not in _FAILURES


#: Outcomes without a rejection reason that are still bad news for the person in front.
_FAILURES = frozenset({ERROR, EventType.PICKUP_FAILED, EventType.LOCKER_FAULT})


@dataclass(frozen=True)
class ResultText:
    """The lines of the result screen, already in the customer's language."""

    ok: bool
    title: str
    detail: str = ""
    extra: str = ""
    #: A refusal that time will mend (an order still being prepared, a code valid
    #: later): amber with what to do, not the red cross of a forged code.
    wait: bool = False
    #: One short thing bigger than anything else on screen: a pickup's locker number.
    big: str = ""


#: Refusals that pass with time rather than mean something is wrong with the code.
WAIT_REASONS = frozenset({"order_not_ready", "not_yet_valid", "outside_hours"})
#: Code types (`code_type`/`claimed_type` of a refusal) as their locale key parts.
CODE_KINDS = {"m": "member", "c": "coupon", "r": "reservation", "p": "pickup", "s": "staff"}
#: A name longer than this many columns (a CJK character takes two) is shortened with
#: an ellipsis: a title may take two lines, never three.
NAME_COLUMNS = 24


def _hours(data: Mapping[str, Any]) -> tuple[Window, ...]:
    """The hours a refused code is valid in, or () when the event has none readable."""
    try:
        return parse_hours(data.get("hours"))
    except ValueError:
        return ()


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return "" if value is None else str(value).strip()


def short_name(name: str, columns: int = NAME_COLUMNS) -> str:
    """`name`, cut to `columns` display columns with an ellipsis when longer."""
    used, out = 0, list[str]()
    for ch in name:
        width = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        if used + width > columns - 1:
            return "".join(out).rstrip() + "…"
        used += width
        out.append(ch)
    return name


def _name(data: Mapping[str, Any], key: str = "name") -> str:
    return short_name(" ".join(_text(data, key).split()))


def shop_when(stamp: str, m: Messages) -> str:
    """ "2026-12-03T14:00" (shop time, as a refusal carries it) as people read it:
    "12月3日 周四 14:00" / "Thu 3 Dec, 14:00"; "" when it cannot be read."""
    try:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M")
    except ValueError:
        return ""
    months, weekdays = m.get("date.months").split(), m.get("date.weekdays").split()
    if len(months) != 12 or len(weekdays) != 7:
        return when.strftime("%Y-%m-%d %H:%M")
    return m.get(
        "date.when",
        month=months[when.month - 1],
        day=when.day,
        weekday=weekdays[when.weekday()],
        time=when.strftime("%H:%M"),
    )


def _refusal(outcome: Outcome, m: Messages) -> ResultText:
    """A refusal in the customer's words: what happened to *this kind* of code, and
    what to do next. A key `reason.<reason>.<kind>.title` (or `.detail`) overrides the
    reason's own wording for that code type."""
    data, reason = outcome.data, str(outcome.reason)
    base = f"reason.{reason}"
    if f"{base}.title" not in m:
        base = "reason.other"
    kind = CODE_KINDS.get(_text(data, "code_type") or _text(data, "claimed_type"), "")

    def line(part: str, **fields: Any) -> str:
        typed = f"{base}.{kind}.{part}"
        return m.get(typed if kind and typed in m else f"{base}.{part}", **fields)

    title, detail = line("title"), line("detail")
    store, uses = _text(data, "claimed_store"), data.get("uses")
    when = shop_when(_text(data, "valid_from"), m)
    hours = _hours(data)
    if reason == "outside_hours" and hours:
        detail = m.get("reason.outside_hours.when", hours=hours_text(hours, m.language))
    elif reason == "wrong_store" and store:
        detail = m.get("reason.wrong_store.for", store=store)
    elif reason == "not_yet_valid" and when:
        detail = m.get("reason.not_yet_valid.when", when=when)
    elif reason == "already_used" and kind == "coupon" and isinstance(uses, int) and uses > 1:
        title, detail = (
            m.get("reason.already_used.card.title"),
            m.get("reason.already_used.card.detail", uses=uses),
        )
    return ResultText(False, title, detail, wait=reason in WAIT_REASONS)


def describe(outcome: Outcome, messages: Messages) -> ResultText:
    """The customer-facing message for one outcome."""
    m, data = messages, outcome.data
    if outcome.event_type == ERROR:
        return ResultText(False, m.get("result.error.title"), m.get("result.error.detail"))
    if outcome.event_type == EventType.PICKUP_FAILED:
        title, detail = m.get("result.pickup_failed.title"), m.get("result.pickup_failed.detail")
        return ResultText(False, title, detail)
    if outcome.event_type == EventType.LOCKER_FAULT:
        locker = _text(data, "locker")
        title, detail = (
            m.get("result.locker_fault.title"),
            m.get("result.locker_fault.detail", locker=locker),
        )
        return ResultText(False, title, detail)
    if outcome.reason is not None:
        return _refusal(outcome, m)

    match outcome.event_type:
        case EventType.CHECKIN:
            name = _name(data)
            counted = bool(data.get("counted", True))
            visits = data.get("visits")
            # A first visit is a welcome, not a welcome back.
            first = counted and visits == 1
            key = "result.checkin.title_first" if first else "result.checkin.title"
            title = m.get(key, name=name) if name else m.get(f"{key}_anonymous")
            points = data.get("points", 0)
            if counted:
                detail = m.get(
                    "result.checkin.detail", earned=data.get("points_earned", 0), points=points
                )
            else:
                detail = m.get("result.checkin.detail_not_counted", points=points)
            if first:
                extra = m.get("result.checkin.first_visit")
            else:
                extra = m.get("result.checkin.visits", visits=visits) if visits else ""
            return ResultText(True, title, detail, extra)
        case EventType.COUPON_REDEEMED:
            campaign, value = _text(data, "campaign"), _text(data, "value")
            name = _text(data, "campaign_name")
            if name and value:
                detail = m.get("result.coupon.named", name=name, value=value)
            elif campaign and value:
                detail = m.get("result.coupon.detail", campaign=campaign, value=value)
            else:
                detail = name or campaign or value
            use, uses = data.get("use"), data.get("uses")
            extra = m.get("result.coupon.use", use=use, uses=uses) if use and uses else ""
            return ResultText(True, m.get("result.coupon.title"), detail, extra)
        case EventType.RESERVATION_ARRIVED:
            name = _name(data)
            title = (
                m.get("result.reservation.title_named", name=name)
                if name
                else m.get("result.reservation.title")
            )
            timing = _text(data, "timing") or "on_time"
            key = f"result.reservation.{timing}"
            extra = m.get(key) if key in m else ""
            return ResultText(True, title, _text(data, "service"), extra)
        case EventType.STAFF_LOGIN:
            name = _name(data) or _name(data, "staff_id")
            return ResultText(True, m.get("result.staff.title"), name)
        case _ if outcome.event_type == LOADING:
            locker, order = _text(data, "locker"), _text(data, "order")
            title = m.get("result.loading.title", locker=locker)
            return ResultText(True, title, m.get("result.loading.detail", order=order))
        case EventType.MEMBER_JOINED:
            return ResultText(True, m.get("result.joined.title"), m.get("result.joined.detail"))
        case EventType.PICKUP_OPENED:
            # The locker number is what people look for: it is the biggest thing shown.
            locker = _text(data, "locker")
            detail = m.get("result.pickup.detail")
            if data.get("confirmed") is False:
                detail = m.get("result.pickup.unconfirmed")
            title = m.get("result.pickup.title" if locker else "result.pickup.title_no_locker")
            return ResultText(True, title, detail, big=locker)
    return ResultText(True, m.get("result.done.title"))
