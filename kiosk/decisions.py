"""What the kiosk does with a scan: pure functions, no I/O, no clock, no globals.

The caller verifies the code, looks up the few stored facts about it, and passes both in
with the time; it gets back a `Decision`: the event to record and the changes that go
with it. Everything a customer can see at the door is decided here, so it is tested here.

Pickups have a device step in the middle: `decide` returns an intent to open a locker,
the caller pulses it, and `after_unlock` turns what the door did into the outcome.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from o2o_protocol.codes import Code, CodeType, Rejected, decode_unverified
from o2o_protocol.messages import EventType, Reason

SIZES = ("S", "M", "L")
#: What an unverified (maybe hostile) id may keep when it is quoted in an event.
_UNSAFE = re.compile(r"[^\w\-.:@+]")
#: pending: known, not in a locker; loading: staff have a locker open for it; ready: in a
#: locker; opened: its door was seen to open for the customer; picked_up; cancelled.
PreorderStatus = Literal["pending", "loading", "ready", "opened", "picked_up", "cancelled"]


@dataclass(frozen=True)
class Rules:
    points_per_visit: int = 10
    once_per_day: bool = False
    reservation_early_min: int = 15
    reservation_late_min: int = 15
    accept: frozenset[CodeType] = frozenset(CodeType)
    #: A member's code shown again within this many minutes earns no new visit or points.
    checkin_cooldown_min: float = 60.0


@dataclass(frozen=True)
class Preorder:
    order: str
    status: PreorderStatus = "pending"
    size: str = "M"
    name: str | None = None
    locker: int | None = None


@dataclass(frozen=True)
class Facts:
    """What the store knows about one code."""

    revoked: bool = False
    coupon_used_at: str | None = None
    member_visits: int = 0
    member_points: int = 0
    member_last_day: str | None = None
    member_last_at: float | None = None
    reservation_arrived_at: str | None = None
    preorder: Preorder | None = None
    #: Lockers holding no order, as (number, size); only looked up for staff loading.
    free_lockers: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class MemberVisit:
    member_id: str
    name: str | None
    visits: int
    points: int
    day: str


@dataclass(frozen=True)
class PreorderChange:
    """The new state of an order (and of the locker it is in) after an outcome."""

    order: str
    status: PreorderStatus
    locker: int | None


@dataclass(frozen=True)
class Decision:
    event_type: EventType
    data: dict[str, Any] = field(default_factory=dict)
    reason: Reason | None = None
    #: Coupon id to mark used (with its expiry, for pruning), in the same write as the event.
    redeem_coupon: str | None = None
    coupon_exp: int | None = None
    member_visit: MemberVisit | None = None
    #: Reservation id to mark arrived (with its expiry), so it is marked once.
    arrive_reservation: str | None = None
    reservation_exp: int | None = None
    preorder: PreorderChange | None = None
    new_member: dict[str, Any] | None = None
    #: Not an outcome yet: open this locker, then ask `after_unlock`.
    open_locker: int | None = None
    purpose: Literal["pickup", "load", ""] = ""

    @property
    def accepted(self) -> bool:
        return self.reason is None

    @property
    def needs_unlock(self) -> bool:
        return self.open_locker is not None


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
            data["claimed_type"] = payload.t.value
            data["claimed_id"] = _UNSAFE.sub("?", payload.id[:64])
    return Decision(EventType.SCAN_REJECTED, data, reason)


def decide(
    result: Code | Rejected,
    facts: Facts,
    rules: Rules,
    *,
    now: float,
    today: str,
    text: str = "",
    staff: bool = False,
) -> Decision:
    """The one place where a scan becomes an outcome (or a locker to open first)."""
    if isinstance(result, Rejected):
        return reject(result.reason, result.detail, text=text)
    code = result
    if code.type not in rules.accept:
        return reject(Reason.NOT_ALLOWED, "this kiosk does not take this kind of code", code)
    if facts.revoked:
        return reject(Reason.REVOKED, "this code was withdrawn by the shop", code)
    match code.type:
        case CodeType.MEMBER:
            return _member(code, facts, rules, today, now)
        case CodeType.COUPON:
            return _coupon(code, facts)
        case CodeType.RESERVATION:
            return _reservation(code, facts, rules, now)
        case CodeType.STAFF:
            return Decision(EventType.STAFF_LOGIN, {"staff_id": code.id, "name": code.payload.n})
        case CodeType.PICKUP:
            if staff:
                return _load(code, facts)
            return _pickup(code, facts)
    return reject(Reason.NOT_ALLOWED, "unsupported code type", code)


def _member(code: Code, facts: Facts, rules: Rules, today: str, now: float) -> Decision:
    name = code.payload.n
    same_day = rules.once_per_day and facts.member_last_day == today
    too_soon = (
        facts.member_last_at is not None
        and now - facts.member_last_at < rules.checkin_cooldown_min * 60
    )
    counted = not (same_day or too_soon)
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
    return Decision(
        EventType.COUPON_REDEEMED, data, redeem_coupon=code.id, coupon_exp=code.payload.exp
    )


def _reservation(code: Code, facts: Facts, rules: Rules, now: float) -> Decision:
    if facts.reservation_arrived_at is not None:
        return reject(Reason.ALREADY_USED, f"arrived at {facts.reservation_arrived_at}", code)
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
    return Decision(
        EventType.RESERVATION_ARRIVED,
        data,
        arrive_reservation=code.id,
        reservation_exp=code.payload.exp,
    )


# --- pickups and loading ----------------------------------------------------------------


def _order_of(code: Code) -> str:
    return code.payload.o or ""


def _pickup(code: Code, facts: Facts) -> Decision:
    order = _order_of(code)
    pre = facts.preorder
    if pre is None or pre.status == "cancelled":
        return reject(Reason.UNKNOWN_ORDER, f"order {order} is not known here", code)
    if pre.status == "picked_up":
        return reject(Reason.ALREADY_USED, f"order {order} was already picked up", code)
    if pre.status in ("pending", "loading") or pre.locker is None:
        return reject(Reason.ORDER_NOT_READY, f"order {order} is not in a locker yet", code)
    data = {"order": order, "locker": pre.locker, "name": pre.name, "pickup_id": code.id}
    return Decision(EventType.PICKUP_OPENED, data, open_locker=pre.locker, purpose="pickup")


def _load(code: Code, facts: Facts) -> Decision:
    """Staff mode: a pickup code puts that order into the smallest free locker it fits."""
    order = _order_of(code)
    pre = facts.preorder
    if pre is None or pre.status == "cancelled":
        return reject(Reason.UNKNOWN_ORDER, f"order {order} is not known here", code)
    if pre.status != "pending":
        # Already in a locker: staff get the customer's path (open it again).
        return _pickup(code, facts)
    need = SIZES.index(pre.size) if pre.size in SIZES else 1
    fitting = sorted(
        (SIZES.index(size), number)
        for number, size in facts.free_lockers
        if size in SIZES and SIZES.index(size) >= need
    )
    if not fitting:
        return reject(Reason.NO_LOCKER_FREE, f"no free locker fits a size {pre.size} order", code)
    number = fitting[0][1]
    data = {"order": order, "locker": number, "size": pre.size}
    return Decision(EventType.LOCKER_LOADED, data, open_locker=number, purpose="load")


def after_unlock(intent: Decision, opened: bool, reason: str | None = None) -> Decision:
    """The outcome of a locker intent once the door has (or has not) opened."""
    assert intent.open_locker is not None
    order, locker = intent.data["order"], intent.open_locker
    if not opened:
        why = reason or "door_not_opened"
        if intent.purpose == "load":
            # Nothing went in: the order waits for a locker again.
            return Decision(
                EventType.LOCKER_FAULT,
                {"locker": locker, "order": order, "fault": why},
                preorder=PreorderChange(order, "pending", None),
            )
        # The order stays ready in its locker: the customer can try again.
        return Decision(EventType.PICKUP_FAILED, {**intent.data, "reason": why})
    if intent.purpose == "load":
        # Recorded when staff close the door again (see `loaded`); nothing to record yet.
        return intent
    # "confirmed": false when the sensor could not see the door open (a jammed latch or a
    # broken switch): the screen asks the customer to call staff if it did not open, and
    # the order stays ready until the door is seen to open and shut.
    confirmed = reason is None
    data = {**intent.data, "confirmed": confirmed}
    change = PreorderChange(order, "opened", locker) if confirmed else None
    return Decision(EventType.PICKUP_OPENED, data, preorder=change)


def loaded(intent: Decision) -> Decision:
    """Staff closed the door on a loaded order: it is ready for its customer."""
    order, locker = intent.data["order"], intent.open_locker
    change = PreorderChange(order, "ready", locker)
    return Decision(EventType.LOCKER_LOADED, intent.data, preorder=change)


def pickup_completed(order: str, locker: int) -> Decision:
    """The customer closed the door: the order is picked up, the locker free again."""
    change = PreorderChange(order, "picked_up", None)
    return Decision(EventType.PICKUP_COMPLETED, {"order": order, "locker": locker}, preorder=change)


# --- joining at the kiosk ---------------------------------------------------------------

_PHONE = re.compile(r"^\+?[0-9]{6,15}$")


def normalise_phone(text: str) -> str | None:
    """Digits (and a leading +) only; None when it cannot be a phone number."""
    phone = re.sub(r"[\s\-()]", "", text)
    return phone if _PHONE.match(phone) else None


def phone_hash(phone: str, secret: str) -> str:
    """Phone numbers are never stored or sent in clear.

    Keyed with a secret only the shop's kiosks hold: there are few enough phone numbers
    to try them all, so an unkeyed (or publicly salted) hash would be the number itself.
    """
    key = hashlib.blake2b(secret.encode(), digest_size=32).digest()
    return hashlib.blake2b(phone.encode(), key=key, digest_size=16).hexdigest()


def decide_join(
    phone_text: str, *, secret: str, member_id: str, join_url: str, known: bool
) -> Decision | None:
    """A new member from a phone number typed on the kiosk; None for a bad number."""
    phone = normalise_phone(phone_text)
    if phone is None:
        return None
    hashed = phone_hash(phone, secret)
    link = _join_link(join_url, member_id)
    data = {"member_id": member_id, "phone_hash": hashed, "join_url": link, "known": known}
    member = {"id": member_id, "phone_hash": hashed, "visits": 0, "points": 0}
    return Decision(EventType.MEMBER_JOINED, data, new_member=None if known else member)


def _join_link(join_url: str, member_id: str) -> str:
    if not join_url:
        return member_id
    sep = "&" if "?" in join_url else "?"
    return f"{join_url}{sep}j={member_id}"


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
