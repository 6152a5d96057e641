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
from datetime import datetime, tzinfo
from typing import Any, Literal, TypeVar

from kiosk.effects import (
    CodeUsed,
    Effect,
    MemberVisit,
    NewMember,
    PointsSpent,
    PoolCodeTaken,
    PreorderChange,
    PreorderStatus,
    Rated,
    RemoteOpenSettled,
    StockTaken,
)
from kiosk.loyalty import RatingSubject
from kiosk.sizes import fitting
from o2o_protocol.codes import Code, CodeType, Rejected, decode_unverified, extract_token
from o2o_protocol.hours import describe, is_open
from o2o_protocol.messages import EventType, PoolCode, Reason, Reward

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
    #: The shop's time zone, which a campaign code's hours are in; None = this machine's.
    zone: tzinfo | None = None


@dataclass(frozen=True)
class Preorder:
    order: str
    status: PreorderStatus = "pending"
    size: str = "M"
    name: str | None = None
    locker: int | None = None


@dataclass(frozen=True)
class Facts:
    """What the local database knows about one code.

    A member's points and visits are the bridge's plus this kiosk's own changes it has
    not counted yet; `member_last_at`/`member_last_day` are this kiosk's last counted
    visit, `member_last_visit_at` the bridge's (a visit at any door).
    """

    revoked: bool = False
    coupon_used_at: str | None = None
    #: Uses of a coupon known here: this kiosk's, or the bridge's count if larger (a
    #: visit card used at other doors); 0 = never used.
    coupon_uses: int = 0
    member_visits: int = 0
    member_points: int = 0
    member_last_day: str | None = None
    member_last_at: float | None = None
    member_last_visit_at: float | None = None
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


def reject(
    reason: Reason,
    detail: str = "",
    code: Code | None = None,
    text: str = "",
    **extra: Any,
) -> Decision:
    """A `scan.rejected` decision; names the code's type and id when they can be read,
    and carries `extra` fields (the hours of a code shown outside them)."""
    data: dict[str, Any] = {"reason": reason.value, **extra}
    if detail:
        data["detail"] = detail
    if code is not None:
        data["code_type"], data["code_id"] = code.type.value, code.id
    elif text:
        # Unverified (maybe forged) fields: kept for the owner's view, never trusted.
        # The token inside, also when it came as a link (a code shown as a URL).
        payload = decode_unverified(extract_token(text))
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
        extra = _refusal_facts(result.reason, text, rules.zone)
        return reject(result.reason, result.detail, text=text, **extra)
    code = result
    if code.type not in rules.accept:
        return reject(Reason.NOT_ALLOWED, "this kiosk does not take this kind of code", code)
    if facts.revoked:
        return reject(Reason.REVOKED, "this code was withdrawn by the shop", code)
    match code.type:
        case CodeType.MEMBER:
            return _member(code, facts, rules, today, now)
        case CodeType.COUPON:
            return _coupon(code, facts, rules, now)
        case CodeType.RESERVATION:
            return _reservation(code, facts, rules, now)
        case CodeType.STAFF:
            return Decision(EventType.STAFF_LOGIN, {"staff_id": code.id, "name": code.name})
        case CodeType.PICKUP:
            if staff:
                return _load(code, facts)
            return _pickup(code, facts)
    return reject(Reason.NOT_ALLOWED, "unsupported code type", code)


def _refusal_facts(reason: Reason, text: str, zone: tzinfo | None) -> dict[str, Any]:
    """What the screen needs to say what to do next about a code verification refused:
    the store it is for, or when it becomes valid (shop time, to the minute). Both are
    checked after the signature (`verify_code`), so they are what the issuer wrote."""
    if reason not in (Reason.WRONG_STORE, Reason.NOT_YET_VALID):
        return {}
    payload = decode_unverified(extract_token(text))
    if isinstance(payload, Rejected):
        return {}
    if reason == Reason.WRONG_STORE:
        return {"claimed_store": _UNSAFE.sub("?", payload.st[:64])}
    start = max(payload.iat, payload.nbf or payload.iat)
    return {"valid_from": shop_time(start, zone).strftime("%Y-%m-%dT%H:%M")}


def _member(code: Code, facts: Facts, rules: Rules, today: str, now: float) -> Decision:
    last_at, last_day = _last_visit(facts, now, rules.zone)
    same_day = rules.once_per_day and last_day == today
    too_soon = last_at is not None and now - last_at < rules.checkin_cooldown_min * 60
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
    visit = (MemberVisit(code.id, code.name, earned, today),) if counted else ()
    return Decision(EventType.CHECKIN, data, effects=visit)


#: The earliest `last_visit` a kiosk believes (2000-01-01T00:00:00Z): older is bad data.
EARLIEST_VISIT = 946684800.0


def plausible_visit(at: object, now: float) -> bool:
    """Whether `at` can be a real last visit: from 2000 to a day ahead of `now` (clocks
    differ a little). Anything else would break the day computation (year 1) or hold the
    cooldown and once-a-day rule forever (year 9999)."""
    if isinstance(at, bool) or not isinstance(at, int | float):
        return False
    return EARLIEST_VISIT <= at <= now + 86400


def _last_visit(
    facts: Facts, now: float, zone: tzinfo | None = None
) -> tuple[float | None, str | None]:
    """The later of this kiosk's last counted visit and the bridge's (any door), as a
    time and a local day: the cooldown and once-a-day hold across doors. A stored bridge
    time that is not `plausible_visit` (written before kiosks checked it) is ignored, so
    it can never lock a member out."""
    at, day = facts.member_last_at, facts.member_last_day
    bridge = facts.member_last_visit_at
    if bridge is not None and plausible_visit(bridge, now):
        at = bridge if at is None else max(at, bridge)
        bridge_day = shop_day(bridge, zone)
        day = bridge_day if day is None else max(day, bridge_day)
    return at, day


def shop_day(ts: float, zone: tzinfo | None) -> str:
    """The shop's calendar day of a time (`YYYY-MM-DD`): once-a-day rules count in it."""
    return shop_time(ts, zone).strftime("%Y-%m-%d")


def shop_time(now: float, zone: tzinfo | None) -> datetime:
    """`now` as the wall clock of the shop reads it (its zone, else this machine's)."""
    return datetime.fromtimestamp(now, zone) if zone else datetime.fromtimestamp(now).astimezone()


def _coupon(code: Code, facts: Facts, rules: Rules, now: float) -> Decision:
    uses = code.uses
    used = max(facts.coupon_uses, 1 if facts.coupon_used_at is not None else 0)
    if used >= uses:
        if uses > 1:  # a visit card: the screen says all its uses are taken
            detail = f"all {uses} uses taken (last at {facts.coupon_used_at})"
            return reject(Reason.ALREADY_USED, detail, code, uses=uses)
        return reject(Reason.ALREADY_USED, f"used at {facts.coupon_used_at}", code)
    hours = code.hours
    if not is_open(hours, shop_time(now, rules.zone)):
        # Nothing is used up: the customer comes back within the hours.
        detail = f"valid {describe(hours, 'en')}"
        return reject(Reason.OUTSIDE_HOURS, detail, code, hours=code.payload.hrs)
    data: dict[str, Any] = {"coupon_id": code.id, "campaign": code.campaign, "value": code.value}
    # A campaign's fields only when the code has them: an old coupon's event is unchanged.
    if code.campaign_name is not None:
        data["campaign_name"] = code.campaign_name
    if code.kind is not None:
        data["kind"] = code.kind
    if uses > 1:
        data.update(use=used + 1, uses=uses)
    effect = CodeUsed(code.id, CodeType.COUPON, exp=code.expires, count=used + 1)
    return Decision(EventType.COUPON_REDEEMED, data, effects=(effect,))


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
    if code.activity is not None:
        data["activity"] = code.activity
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
    phone_text: str,
    *,
    secret: str,
    member_id: str,
    join_url: str,
    known: bool,
    pooled: PoolCode | None = None,
    referrer: str | None = None,
) -> Decision | None:
    """A new member from a phone number typed on the kiosk; None for a bad number.

    A new member takes `pooled` (a member code the bridge signed in advance) when there
    is one: its id becomes theirs and its url their page, the code leaves the pool in
    the same write. A member already known keeps their id and the pool its code.
    """
    phone = normalise_phone(phone_text)
    if phone is None:
        return None
    hashed = phone_hash(phone, secret)
    card = None if known else pooled
    if card is not None:
        member_id = card.id
    link = _join_link(join_url, member_id)
    data: dict[str, Any] = {
        "member_id": member_id,
        "phone_hash": hashed,
        "join_url": link,
        "known": known,
    }
    effects: tuple[Effect, ...] = () if known else (NewMember(member_id, hashed),)
    if card is not None:
        if card.url:
            data["page_url"] = card.url
        effects += (PoolCodeTaken("member", card.id),)
    if referrer and referrer != member_id and not known:
        data["referrer"] = _UNSAFE.sub("?", referrer[:256])
    return Decision(EventType.MEMBER_JOINED, data, effects=effects)


def _join_link(join_url: str, member_id: str) -> str:
    return _link(join_url, "j", member_id) or member_id


def share_link(join_url: str, member_id: str) -> str | None:
    """The link a member passes on: whoever joins through it names them as referrer."""
    return _link(join_url, "ref", member_id)


def _link(join_url: str, key: str, member_id: str) -> str | None:
    if not join_url:
        return None
    sep = "&" if "?" in join_url else "?"
    return f"{join_url}{sep}{key}={member_id}"


# --- rewards and ratings ----------------------------------------------------------------


def redeem(
    member_id: str,
    reward: Reward | None,
    facts: Facts,
    voucher: PoolCode | None,
    *,
    reward_id: str | None = None,
) -> Decision:
    """A member spends points on a reward (`facts.member_points`: the balance the kiosk
    knows, its own pending spends already off). The voucher leaves the pool, and the
    points the balance, in the same write as the event. `reward_id`: the id asked for,
    quoted when no such reward is known."""
    balance = facts.member_points
    asked = reward.id if reward else _UNSAFE.sub("?", (reward_id or "")[:64])
    base = {"member_id": member_id, "reward_id": asked}
    if reward is None or reward.stock == 0 or voucher is None:
        why = "no such reward" if reward is None else "none of this reward left here"
        return Decision(
            EventType.SCAN_REJECTED,
            {"reason": Reason.NOT_ALLOWED.value, "detail": why, **base},
            Reason.NOT_ALLOWED,
        )
    if reward.points > balance:
        data = {
            "reason": Reason.INSUFFICIENT_POINTS.value,
            **base,
            "points": reward.points,
            "balance": balance,
        }
        return Decision(EventType.SCAN_REJECTED, data, Reason.INSUFFICIENT_POINTS)
    data = {
        **base,
        "reward": reward.name,
        "points": reward.points,
        "balance": balance - reward.points,
        "voucher_id": voucher.id,
        # The signed code itself: the slip prints it, and a reprint prints it again.
        "voucher_code": voucher.code,
    }
    effects = (
        PointsSpent(member_id, reward.points),
        PoolCodeTaken("voucher", voucher.id),
        StockTaken(reward.id),
    )
    return Decision(EventType.POINTS_REDEEMED, data, effects=effects)


def review(subject: RatingSubject, rating: int, *, rated: bool = False) -> Decision:
    """A one-tap rating of a visit; once per rated event (`rated`: it already was).

    A rating outside 1..5 is the caller's mistake, not an outcome: ValueError.
    """
    if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
        raise ValueError(f"a rating is 1 to 5, not {rating!r}")
    about: dict[str, Any] = {
        "subject": subject.subject,
        "event": subject.event,
        "member_id": subject.member_id,
        "order": subject.order,
        "reservation_id": subject.reservation_id,
    }
    about = {k: v for k, v in about.items() if v is not None}
    if rated:
        refused = {"reason": Reason.ALREADY_USED.value, "detail": "already rated", **about}
        return Decision(EventType.SCAN_REJECTED, refused, Reason.ALREADY_USED)
    data: dict[str, Any] = {"rating": rating, **about}
    return Decision(EventType.REVIEW_SUBMITTED, data, effects=(Rated(subject.event),))
