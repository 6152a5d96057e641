"""What the kiosk does with a scan: pure functions, no I/O, no clock, no globals.

The caller verifies the code, looks up the few stored facts about it, and passes both in
with the time; it gets back a `Decision`: the event to record and its typed effects
(`kiosk.effects`). Every outcome the kiosk records is built here (scans, joins, door
and printer faults, staff opens), so each is tested here without I/O.

Pickups have a device step in the middle: `decide` returns an `Unlock`, the caller
pulses the locker, and `after_unlock` turns what the door did into the outcome.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from kiosk.effects import (
    CodeUsed,
    Effect,
    MemberVisit,
    NewMember,
    PreorderChange,
    PreorderStatus,
    RemoteOpenSettled,
)
from kiosk.sizes import fitting
from o2o_protocol.codes import Code, CodeType, Rejected, decode_unverified
from o2o_protocol.messages import EventType, Reason

#: What an unverified (maybe hostile) id may keep when it is quoted in an event.
_UNSAFE = re.compile(r"[^\w\-.:@+]")
E = TypeVar("E", bound=Effect)


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
    """What the local database knows about one code."""

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
class Decision:
    """An outcome: the event to record, and what it changes (applied in the same write)."""

    event_type: EventType
    data: dict[str, Any] = field(default_factory=dict)
    reason: Reason | None = None
    effects: tuple[Effect, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reason is None

    def effect(self, kind: type[E]) -> E | None:
        """The first effect of that kind, or None (for callers and tests that look)."""
        return next((e for e in self.effects if isinstance(e, kind)), None)


@dataclass(frozen=True)
class Unlock:
    """Not an outcome yet: open `locker`, then ask `after_unlock` what the door did."""

    locker: int
    order: str
    purpose: Literal["pickup", "load"]
    #: The data of the event that follows (pickup.opened or locker.loaded).
    data: dict[str, Any] = field(default_factory=dict)


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
) -> Decision | Unlock:
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
            return Decision(EventType.STAFF_LOGIN, {"staff_id": code.id, "name": code.name})
        case CodeType.PICKUP:
            if staff:
                return _load(code, facts)
            return _pickup(code, facts)
    return reject(Reason.NOT_ALLOWED, "unsupported code type", code)


def _member(code: Code, facts: Facts, rules: Rules, today: str, now: float) -> Decision:
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
        "name": code.name,
        "visits": visits,
        "points_earned": earned,
        "points": points,
        "counted": counted,
    }
    visit = (MemberVisit(code.id, code.name, visits, points, today),) if counted else ()
    return Decision(EventType.CHECKIN, data, effects=visit)


def _coupon(code: Code, facts: Facts) -> Decision:
    if facts.coupon_used_at is not None:
        return reject(Reason.ALREADY_USED, f"used at {facts.coupon_used_at}", code)
    data = {"coupon_id": code.id, "campaign": code.campaign, "value": code.value}
    used = CodeUsed(code.id, CodeType.COUPON, exp=code.expires)
    return Decision(EventType.COUPON_REDEEMED, data, effects=(used,))


def _reservation(code: Code, facts: Facts, rules: Rules, now: float) -> Decision:
    if facts.reservation_arrived_at is not None:
        return reject(Reason.ALREADY_USED, f"arrived at {facts.reservation_arrived_at}", code)
    at = code.slot or 0
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
        "service": code.service,
        "name": code.name,
        "timing": timing,
        "minutes_late": round(minutes),
    }
    # Marked arrived in the same table as used coupons, so it is marked once.
    arrived = CodeUsed(code.id, CodeType.RESERVATION, exp=code.expires)
    return Decision(EventType.RESERVATION_ARRIVED, data, effects=(arrived,))


# --- pickups and loading ----------------------------------------------------------------


def _pickup(code: Code, facts: Facts) -> Decision | Unlock:
    order = code.order
    pre = facts.preorder
    if pre is None or pre.status == "cancelled":
        return reject(Reason.UNKNOWN_ORDER, f"order {order} is not known here", code)
    if pre.status == "picked_up":
        return reject(Reason.ALREADY_USED, f"order {order} was already picked up", code)
    if pre.status in ("pending", "loading") or pre.locker is None:
        return reject(Reason.ORDER_NOT_READY, f"order {order} is not in a locker yet", code)
    data = {"order": order, "locker": pre.locker, "name": pre.name, "pickup_id": code.id}
    return Unlock(pre.locker, order, "pickup", data)


def _load(code: Code, facts: Facts) -> Decision | Unlock:
    """Staff mode: a pickup code puts that order into the smallest free locker it fits."""
    order = code.order
    pre = facts.preorder
    if pre is None or pre.status == "cancelled":
        return reject(Reason.UNKNOWN_ORDER, f"order {order} is not known here", code)
    if pre.status != "pending":
        # Already in a locker: staff get the customer's path (open it again).
        return _pickup(code, facts)
    fits = fitting(pre.size, facts.free_lockers)
    if not fits:
        return reject(Reason.NO_LOCKER_FREE, f"no free locker fits a size {pre.size} order", code)
    return load_intent(order, fits[0], pre.size)


def load_intent(order: str, locker: int, size: str) -> Unlock:
    """Open `locker` for staff to put `order` in (also rebuilt after a restart)."""
    return Unlock(locker, order, "load", {"order": order, "locker": locker, "size": size})


def after_unlock(intent: Unlock, opened: bool, reason: str | None = None) -> Decision | None:
    """The outcome of an unlock once the door has (or has not) opened.

    None for a load whose door opened: `loaded` is recorded when staff shut it again.
    """
    order, locker = intent.order, intent.locker
    if not opened:
        why = reason or "door_not_opened"
        if intent.purpose == "load":
            # Nothing went in: the order waits for a locker again.
            return Decision(
                EventType.LOCKER_FAULT,
                {"locker": locker, "order": order, "fault": why},
                effects=(PreorderChange(order, "pending", None),),
            )
        # The order stays ready in its locker: the customer can try again.
        return Decision(EventType.PICKUP_FAILED, {**intent.data, "reason": why})
    if intent.purpose == "load":
        return None
    # "confirmed": false when the sensor could not see the door open (a jammed latch or a
    # broken switch): the screen asks the customer to call staff if it did not open, and
    # the order stays ready until the door is seen to open and shut.
    confirmed = reason is None
    data = {**intent.data, "confirmed": confirmed}
    change = (PreorderChange(order, "opened", locker),) if confirmed else ()
    return Decision(EventType.PICKUP_OPENED, data, effects=change)


def loaded(intent: Unlock) -> Decision:
    """Staff closed the door on a loaded order: it is ready for its customer."""
    change = PreorderChange(intent.order, "ready", intent.locker)
    return Decision(EventType.LOCKER_LOADED, intent.data, effects=(change,))


def pickup_completed(order: str, locker: int) -> Decision:
    """The customer closed the door: the order is picked up, the locker free again."""
    change = PreorderChange(order, "picked_up", None)
    return Decision(
        EventType.PICKUP_COMPLETED, {"order": order, "locker": locker}, effects=(change,)
    )


def door_not_seen_open(intent: Unlock) -> Decision:
    """An unlock the sensor never confirmed, and the door never read open afterwards.

    A pickup's order stays ready (the goods never left the locker); a load's order waits
    for a locker again (nothing went in).
    """
    data = {"locker": intent.locker, "order": intent.order, "fault": "not_seen_open"}
    if intent.purpose == "load":
        return Decision(
            EventType.LOCKER_FAULT, data, effects=(PreorderChange(intent.order, "pending", None),)
        )
    return Decision(EventType.LOCKER_FAULT, data)


def door_left_open(locker: int) -> Decision:
    """A door still open long after a pickup or a load: the owner hears of it."""
    return Decision(EventType.LOCKER_FAULT, {"locker": locker, "fault": "left_open"})


def locker_fault(locker: int, kind: str, detail: str) -> Decision:
    """What the locker hardware reported by itself (a forced door, a sensor in doubt)."""
    return Decision(EventType.LOCKER_FAULT, {"locker": locker, "fault": kind, "detail": detail})


def printer_fault(kind: str, detail: str) -> Decision:
    return Decision(EventType.PRINTER_FAULT, {"fault": kind, "detail": detail})


def staff_opened(
    locker: int,
    *,
    source: str,
    opened: bool,
    reason: str | None,
    order: str | None,
    settles: int | None = None,
) -> Decision:
    """A locker opened on a staff member's (or the owner's remote) say-so, for the log.

    `settles`: the seq of the remote `locker.open` this pulse carried out.
    """
    data: dict[str, Any] = {
        "action": "locker.open",
        "locker": locker,
        "source": source,
        "opened": opened,
        "order": order,
    }
    if reason:
        data["reason"] = reason
    effects = () if settles is None else (RemoteOpenSettled(settles),)
    return Decision(EventType.STAFF_ACTION, data, effects=effects)


def remote_open_expired(expires: int | None, now: float) -> bool:
    """A `locker.open` past its `expires` opens nothing: a locker must not open hours
    later (a kiosk back from a long outage, or sent its whole command history again)."""
    return expires is not None and expires < now


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
    member = () if known else (NewMember(member_id, hashed),)
    return Decision(EventType.MEMBER_JOINED, data, effects=member)


def _join_link(join_url: str, member_id: str) -> str:
    if not join_url:
        return member_id
    sep = "&" if "?" in join_url else "?"
    return f"{join_url}{sep}j={member_id}"
