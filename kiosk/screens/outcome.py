"""What the result screen says about an outcome: plain data, no Kivy.

Kept apart from the widgets so every event type and rejection reason can be checked
for a customer-friendly message without opening a window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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


def _hours(data: Mapping[str, Any]) -> tuple[Window, ...]:
    """The hours a refused code is valid in, or () when the event has none readable."""
    try:
        return parse_hours(data.get("hours"))
    except ValueError:
        return ()


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return "" if value is None else str(value).strip()


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
        base = f"reason.{outcome.reason}"
        if f"{base}.title" not in m:
            base = "reason.other"
        detail = m.get(f"{base}.detail")
        hours = _hours(data)
        if outcome.reason == "outside_hours" and hours:
            detail = m.get("reason.outside_hours.when", hours=hours_text(hours, m.language))
        return ResultText(False, m.get(f"{base}.title"), detail)

    match outcome.event_type:
        case EventType.CHECKIN:
            name = _text(data, "name")
            title = (
                m.get("result.checkin.title", name=name)
                if name
                else m.get("result.checkin.title_anonymous")
            )
            points = data.get("points", 0)
            if data.get("counted", True):
                detail = m.get(
                    "result.checkin.detail", earned=data.get("points_earned", 0), points=points
                )
            else:
                detail = m.get("result.checkin.detail_not_counted", points=points)
            visits = data.get("visits")
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
            name = _text(data, "name")
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
            name = _text(data, "name") or _text(data, "staff_id")
            return ResultText(True, m.get("result.staff.title"), name)
        case _ if outcome.event_type == LOADING:
            locker, order = _text(data, "locker"), _text(data, "order")
            title = m.get("result.loading.title", locker=locker)
            return ResultText(True, title, m.get("result.loading.detail", order=order))
        case EventType.MEMBER_JOINED:
            return ResultText(True, m.get("result.joined.title"), m.get("result.joined.detail"))
        case EventType.PICKUP_OPENED:
            locker = _text(data, "locker")
            detail = m.get("result.pickup.detail", locker=locker) if locker else ""
            if data.get("confirmed") is False:
                detail = m.get("result.pickup.unconfirmed", locker=locker)
            return ResultText(True, m.get("result.pickup.title"), detail)
    return ResultText(True, m.get("result.done.title"))
