"""What the kiosk does with a scan: pure functions, no I/O, no clock, no globals.

The caller verifies the code, looks up the few stored facts about it, and passes both in
with the time; it gets back a `Decision`: the event to record and the changes that go
with it. Everything a customer can see at the door is decided here, so it is tested here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from o2o_protocol.codes import Code, CodeType, Rejected, decode_unverified
from o2o_protocol.messages import EventType, Reason


@dataclass(frozen=True)
class Rules:
    points_per_visit: int = 10
    once_per_day: bool = False
    reservation_early_min: int = 15
    reservation_late_min: int = 15


@dataclass(frozen=True)
class Facts:
    """What the store knows about one code."""

    revoked: bool = False
    coupon_used_at: str | None = None
    member_visits: int = 0
    member_points: int = 0
    member_last_day: str | None = None


@dataclass(frozen=True)
class MemberVisit:
    member_id: str
    name: str | None
    visits: int
    points: int
    day: str


@dataclass(frozen=True)
class Decision:
    event_type: EventType
    data: dict[str, Any] = field(default_factory=dict)
    reason: Reason | None = None
    #: Coupon id to mark used, recorded in the same write as the event.
    redeem_coupon: str | None = None
    member_visit: MemberVisit | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


def reject(reason: Reason, detail: str = "", code: Code | None = None, text: str = "") -> Decision:
    """A `scan.rejected` decision; names the code's type and id when they can be read."""
    data: dict[str, Any] = {"reason": reason.value}
    if detail:
        data["detail"] = detail
    if code is not None:
        data["code_type"], data["code_id"] = code.type.value, code.id
    elif text:
        # Unverified (maybe forged) fields: kept for the owner's view, never trusted.
        payload = decode_unverified(text)
        if not isinstance(payload, Rejected):
            data["claimed_type"], data["claimed_id"] = payload.t.value, payload.id[:64]
    return Decision(EventType.SCAN_REJECTED, data, reason)


def decide(
    result: Code | Rejected,
    facts: Facts,
    rules: Rules,
    *,
    now: float,
    today: str,
    text: str = "",
) -> Decision:
    """The one place where a scan becomes an outcome."""
    if isinstance(result, Rejected):
        return reject(result.reason, result.detail, text=text)
    code = result
    if facts.revoked:
        return reject(Reason.REVOKED, "this code was withdrawn by the shop", code)
    match code.type:
        case CodeType.MEMBER:
            return _member(code, facts, rules, today)
        case CodeType.COUPON:
            return _coupon(code, facts)
        case CodeType.RESERVATION:
            return _reservation(code, rules, now)
        case CodeType.STAFF:
            return Decision(EventType.STAFF_LOGIN, {"staff_id": code.id, "name": code.payload.n})
        case CodeType.PICKUP:
            # Preorders reach the kiosk by `preorder.upsert`; without one the order is unknown.
            return reject(Reason.UNKNOWN_ORDER, f"order {code.payload.o} is not known here", code)
    return reject(Reason.NOT_ALLOWED, "unsupported code type", code)


def _member(code: Code, facts: Facts, rules: Rules, today: str) -> Decision:
    name = code.payload.n
    counted = not (rules.once_per_day and facts.member_last_day == today)
    earned = rules.points_per_visit if counted else 0
    visits = facts.member_visits + (1 if counted else 0)
    points = facts.member_points + earned
    data = {
        "member_id": code.id,
        "name": name,
        "visits": visits,
        "points_earned": earned,
        "points": points,
        "counted": counted,
    }
    visit = MemberVisit(code.id, name, visits, points, today) if counted else None
    return Decision(EventType.CHECKIN, data, member_visit=visit)


def _coupon(code: Code, facts: Facts) -> Decision:
    if facts.coupon_used_at is not None:
        return reject(Reason.ALREADY_USED, f"used at {facts.coupon_used_at}", code)
    data = {"coupon_id": code.id, "campaign": code.payload.cp, "value": code.payload.v}
    return Decision(EventType.COUPON_REDEEMED, data, redeem_coupon=code.id)


def _reservation(code: Code, rules: Rules, now: float) -> Decision:
    at = code.payload.at or 0
    minutes = (now - at) / 60
    if minutes < -rules.reservation_early_min:
        timing = "early"
    elif minutes > rules.reservation_late_min:
        timing = "late"
    else:
        timing = "on_time"
    data = {
        "reservation_id": code.id,
        "at": at,
        "service": code.payload.sv,
        "name": code.payload.n,
        "timing": timing,
        "minutes_late": round(minutes),
    }
    return Decision(EventType.RESERVATION_ARRIVED, data)


class QuietWindow:
    """The same code held in front of the camera for seconds is one scan, not several.

    Keyed by the scanned text; a code counts again once it has been out of sight for
    `window_s`. Times are the frames' capture times, so replays behave like live cameras.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last_seen: dict[str, float] = {}

    def is_new(self, text: str, t: float) -> bool:
        last = self._last_seen.get(text)
        self._last_seen[text] = t
        if len(self._last_seen) > 256:
            cutoff = t - self.window_s
            self._last_seen = {k: v for k, v in self._last_seen.items() if v >= cutoff}
        return last is None or t - last > self.window_s
