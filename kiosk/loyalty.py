"""What the screens get to offer after a visit: rewards a member can take, and what a
rating is about. Plain data and pure functions (no Kivy, no I/O), so the screens and the
runtime share one vocabulary (docs/members.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from o2o_protocol.messages import EventType


@dataclass(frozen=True)
class RewardChoice:
    id: str
    name: str
    name_en: str | None
    points: int


@dataclass(frozen=True)
class MemberOffer:
    """A member's balance and the rewards they can take now: affordable, in stock, and
    with a voucher left in this kiosk's pool (one the kiosk could not print is no offer)."""

    member_id: str
    balance: int
    rewards: tuple[RewardChoice, ...]


@dataclass(frozen=True)
class RatingSubject:
    """What a rating is about: the kind of visit and the event that recorded it."""

    subject: str  # "checkin" | "pickup" | "reservation"
    event: str
    member_id: str | None = None
    order: str | None = None
    reservation_id: str | None = None


def rating_subject(event_type: str, event_id: str, data: Mapping[str, Any]) -> RatingSubject | None:
    """The subject a result screen may ask to rate; None for outcomes nobody rates."""
    match event_type:
        case EventType.CHECKIN:
            return RatingSubject("checkin", event_id, member_id=_text(data, "member_id"))
        case EventType.PICKUP_OPENED | EventType.PICKUP_COMPLETED:
            return RatingSubject("pickup", event_id, order=_text(data, "order"))
        case EventType.RESERVATION_ARRIVED:
            rid = _text(data, "reservation_id")
            return RatingSubject("reservation", event_id, reservation_id=rid)
    return None


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)
