"""What an outcome or a bridge command changes in the kiosk's database, as typed values.

Decisions (`kiosk.decisions`) and commands (`kiosk.commands`) produce these; only the
local database (`kiosk.localdb.KioskDB`) applies them, all in the same durable write as
the event they belong to. Frozen values: they can be compared in tests and never change
on their way to the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from o2o_protocol.codes import CodeType

#: pending: known, not in a locker; loading: staff have a locker open for it; ready: in a
#: locker; opened: its door was seen to open for the customer; picked_up; cancelled.
PreorderStatus = Literal["pending", "loading", "ready", "opened", "picked_up", "cancelled"]


@dataclass(frozen=True)
class CodeUsed:
    """A single-use code (a coupon, a reservation) is used up.

    `at` None means "when the event is written"; `exp` lets the database forget it once
    the code could not be shown any more. `keep_first` (a coupon used at another kiosk)
    never overwrites a use this kiosk already knows. `count`: the uses known after this
    one (a visit card's); the database keeps the largest count it has seen.
    """

    code_id: str
    kind: Literal[CodeType.COUPON, CodeType.RESERVATION]
    exp: int | None = None
    at: str | None = None
    kiosk: str | None = None
    keep_first: bool = False
    count: int = 1


@dataclass(frozen=True)
class CodeRevoked:
    """The shop withdrew a code (any type); `at` is when the kiosk heard of it."""

    code_id: str
    at: str


@dataclass(frozen=True)
class MemberVisit:
    """A counted visit: `points` earned, kept pending until the bridge has counted it,
    and the day (for once-a-day rules)."""

    member_id: str
    name: str | None
    points: int
    day: str


@dataclass(frozen=True)
class PointsSpent:
    """A reward paid for at this kiosk: a pending change of −`points` for the member."""

    member_id: str
    points: int


@dataclass(frozen=True)
class NewMember:
    """A member who joined at the kiosk, known by the keyed hash of their phone only."""

    member_id: str
    phone_hash: str


@dataclass(frozen=True)
class MemberUpdate:
    """The bridge's view of a member: only the fields it sent (`name`, `points`,
    `visits`, `last_visit`). `applied`: this kiosk's events its balance already counts,
    whose pending changes go; None (an upsert without it) keeps every pending change.
    `version`: the member's ledger version; one older than the stored one changes nothing."""

    member_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    applied: tuple[str, ...] | None = None
    version: int | None = None


@dataclass(frozen=True)
class RewardsReplaced:
    """The store's whole active catalogue (`o2o_protocol.messages.Reward` dumps), in order."""

    rewards: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class StockTaken:
    """One of a reward redeemed here: its local stock goes down (never below zero)."""

    reward_id: str


@dataclass(frozen=True)
class PoolCodesAdded:
    """Pre-signed codes from the bridge: vouchers of `reward`, or member codes.

    Each is `(id, code, url)`; ids the kiosk holds or has handed out are ignored."""

    kind: Literal["voucher", "member"]
    reward: str | None
    codes: tuple[tuple[str, str, str | None], ...]


@dataclass(frozen=True)
class PoolCodeTaken:
    """A pooled code handed out: gone from the pool in the same write as the event that
    prints it. The write fails (nothing recorded) if the code is no longer there."""

    kind: Literal["voucher", "member"]
    code_id: str


@dataclass(frozen=True)
class Rated:
    """The event `event_id` was rated: it cannot be rated again."""

    event_id: str


@dataclass(frozen=True)
class PreorderChange:
    """The new state of an order (and of the locker it is in) after an outcome."""

    order: str
    status: PreorderStatus
    locker: int | None


@dataclass(frozen=True)
class PreorderDetails:
    """An order announced (or updated) online; a new one waits for staff to load it."""

    order: str
    size: str
    name: str | None = None
    items: Any = None


@dataclass(frozen=True)
class PreorderCancelled:
    """An order cancelled online; an order this kiosk never heard of stays unknown."""

    order: str


@dataclass(frozen=True)
class RemoteOpenQueued:
    """The bridge asked for a locker to open (`locker.open`, command `seq`).

    Kept in the same write as the command's seq and dropped in the same write as the
    `staff.action` that logs the pulse, so a restart or a power cut in between does not
    lose it: the kiosk runs it again at start-up (unless `expires` has passed).
    """

    seq: int
    locker: int
    by: str
    expires: int | None = None


@dataclass(frozen=True)
class RemoteOpenSettled:
    """A queued remote open has run, or can never run (expired, no such locker)."""

    seq: int


Effect = (
    CodeUsed
    | CodeRevoked
    | MemberVisit
    | PointsSpent
    | NewMember
    | MemberUpdate
    | RewardsReplaced
    | StockTaken
    | PoolCodesAdded
    | PoolCodeTaken
    | Rated
    | PreorderChange
    | PreorderDetails
    | PreorderCancelled
    | RemoteOpenQueued
    | RemoteOpenSettled
)
