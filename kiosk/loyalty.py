"""What a member can spend and what a visitor can rate, as plain data (docs/members.md).

The screens show these and hand them back to the kiosk runtime; nothing here touches a
store, so the kiosk core and the touch UI agree on one small vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from o2o_protocol.messages import EventType


@dataclass(frozen=True)
class RewardChoice:
    """One reward as the result screen offers it: its names and its price in points."""

    id: str
    name: str
    name_en: str | None
    points: int


@dataclass(frozen=True)
class MemberOffer:
    """A member's balance as this kiosk knows it, and the rewards they can afford now."""

    member_id: str
    balance: int
    rewards: tuple[RewardChoice, ...]  # affordable only


@dataclass(frozen=True)
class RatingSubject:
    """What a rating is about: the rated event, and who or what it concerned."""

    subject: str  # "checkin" | "pickup" | "reservation"
    event: str  # the rated event's id
    member_id: str | None = None
    order: str | None = None
    reservation_id: str | None = None


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None or value == "" else str(value)


def rating_subject(event_type: str, event_id: str, data: Mapping[str, Any]) -> RatingSubject | None:
    """The subject a visitor may rate after this event, or None for events not rated."""
    match event_type:
        case EventType.CHECKIN:
            return RatingSubject("checkin", event_id, member_id=_text(data, "member_id"))
        case EventType.PICKUP_OPENED | EventType.PICKUP_COMPLETED:
            return RatingSubject("pickup", event_id, order=_text(data, "order"))
        case EventType.RESERVATION_ARRIVED:
            return RatingSubject(
                "reservation", event_id, reservation_id=_text(data, "reservation_id")
            )
    return None
