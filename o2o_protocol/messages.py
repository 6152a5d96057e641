"""Message models of the MQTT interface (docs/mqtt.md) and rejection reasons (docs/codes.md).

Every payload that crosses the wire becomes one of these frozen models before any
logic sees it; parsing failures raise `ProtocolError` only, never anything else.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, Literal

import uuid6
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: Always used with `fullmatch`: `$` alone would let a trailing newline through, and a
#: newline in a topic level makes the broker drop the connection that publishes it.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Event ids and types: UUIDs, ULIDs and dotted names; nothing a database or log chokes on.
TOKEN_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
#: RFC 3339 with a zone, a year a database can hold.
_RFC3339 = re.compile(
    r"(19[7-9]\d|2\d{3})-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})"
)
MAX_SEQ = 2**63 - 1


class ProtocolError(ValueError):
    """A payload that does not follow the contract."""


class Reason(StrEnum):
    """Why a scan was refused. The values are the contract's exact strings."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_STORE = "wrong_store"
    ALREADY_USED = "already_used"
    REVOKED = "revoked"
    UNKNOWN_ORDER = "unknown_order"
    ORDER_NOT_READY = "order_not_ready"
    NO_LOCKER_FREE = "no_locker_free"
    NOT_ALLOWED = "not_allowed"
    #: A campaign code shown outside the hours its campaign is valid.
    OUTSIDE_HOURS = "outside_hours"
    #: A reward asked for with fewer points than it costs (docs/members.md).
    INSUFFICIENT_POINTS = "insufficient_points"


class EventType(StrEnum):
    CHECKIN = "checkin"
    COUPON_REDEEMED = "coupon.redeemed"
    SCAN_REJECTED = "scan.rejected"
    RESERVATION_ARRIVED = "reservation.arrived"
    MEMBER_JOINED = "member.joined"
    PICKUP_OPENED = "pickup.opened"
    PICKUP_COMPLETED = "pickup.completed"
    PICKUP_FAILED = "pickup.failed"
    LOCKER_LOADED = "locker.loaded"
    LOCKER_FAULT = "locker.fault"
    PRINTER_FAULT = "printer.fault"
    STAFF_LOGIN = "staff.login"
    #: A staff action other than a login (a locker opened remotely or from staff mode).
    STAFF_ACTION = "staff.action"
    #: A member spent points on a reward at the kiosk (docs/members.md).
    POINTS_REDEEMED = "points.redeemed"
    #: A rating 1-5 after a check-in, a pickup or an activity.
    REVIEW_SUBMITTED = "review.submitted"


class CommandName(StrEnum):
    PREORDER_UPSERT = "preorder.upsert"
    PREORDER_CANCEL = "preorder.cancel"
    CODE_REVOKE = "code.revoke"
    MEMBER_UPSERT = "member.upsert"
    LOCKER_OPEN = "locker.open"
    #: A coupon was redeemed at another kiosk of the store: single use per store.
    COUPON_USED = "coupon.used"
    #: The store's reward catalogue, whole (replaces the kiosk's).
    REWARDS_SET = "rewards.set"
    #: Signed codes the kiosk hands out later without a signing key: reward vouchers and
    #: member cards for people who join at the door (docs/members.md).
    POOL_REFILL = "pool.refill"
    #: `member.upsert` for many members at once: a busy door's batch of check-ins costs
    #: each other door one command, not one per member (docs/mqtt.md).
    MEMBERS_UPSERT = "members.upsert"
    #: `coupon.used` for many coupons at once, likewise.
    COUPONS_USED = "coupons.used"


def new_event_id() -> str:
    """A unique, time-ordered id (UUIDv7), so ids sort in the order events happened."""
    return str(uuid6.uuid7())


def check_id(value: str, what: str = "id") -> str:
    """Store and kiosk ids become MQTT topic levels: no wildcards, no slashes."""
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be 1-64 letters, digits, '-' or '_'")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(_Frozen):
    """The event envelope every kiosk publishes on `…/events`."""

    id: str = Field(pattern=TOKEN_PATTERN)
    seq: int = Field(ge=1, le=MAX_SEQ)
    type: str = Field(pattern=TOKEN_PATTERN)
    ts: str = Field(min_length=1, max_length=40)
    store: str
    kiosk: str
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("store", "kiosk")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        return check_id(v)

    @field_validator("ts")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        from o2o_protocol.timeutil import parse_rfc3339

        try:
            if not _RFC3339.fullmatch(v):
                raise ValueError
            parse_rfc3339(v)
        except (ValueError, OverflowError):
            raise ValueError("ts must be an RFC 3339 time with a zone") from None
        return v


class Ack(_Frozen):
    ids: list[str]


class Command(_Frozen):
    seq: int = Field(ge=1, le=MAX_SEQ)
    name: str = Field(min_length=1, max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)


# --- command data: one model per command name, checked on both sides -------------------


class _CommandData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class PreorderUpsert(_CommandData):
    order: str = Field(min_length=1, max_length=64)
    size: Literal["S", "M", "L"] = "M"
    name: str | None = Field(default=None, max_length=100)
    items: list[Any] | None = None

    @field_validator("size", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class PreorderCancel(_CommandData):
    order: str = Field(min_length=1, max_length=64)


class CodeRevoke(_CommandData):
    id: str = Field(min_length=1, max_length=256)


class MemberUpsert(_CommandData):
    """The bridge's view of a member after a change to its ledger (docs/members.md).

    `points` may be below zero: two doors offline spent the same points. `applied` names
    this kiosk's own events that the balance already counts, so the kiosk stops adding
    them on top; `last_visit` (RFC 3339) lets its check-in cooldown hold across doors;
    `version` orders upserts of one member.
    """

    id: str = Field(min_length=1, max_length=256)
    name: str | None = Field(default=None, max_length=100)
    points: int | None = Field(default=None, ge=-(10**9), le=10**9)
    visits: int | None = Field(default=None, ge=0, le=10**9)
    last_visit: str | None = Field(default=None, max_length=40)
    applied: list[str] | None = Field(default=None, max_length=200)
    #: Grows with every change to the member's ledger (the id of its newest entry): a
    #: kiosk ignores an upsert older than one it has applied, so two bridge workers
    #: answering one after the other can never set an older balance over a newer one.
    version: int | None = Field(default=None, ge=0, le=2**63 - 1)


class MembersUpsert(_CommandData):
    """Many `member.upsert`s in one command, applied together, each as on its own."""

    members: list[MemberUpsert] = Field(min_length=1, max_length=1000)


class LockerOpen(_CommandData):
    locker: int = Field(ge=1, le=1000)
    by: str = Field(default="bridge", max_length=64)
    #: Unix seconds after which the kiosk ignores it: a locker must not open hours later
    #: (say, when a kiosk with a fresh store is sent its whole command history again).
    expires: int | None = None


class CouponUsed(_CommandData):
    id: str = Field(min_length=1, max_length=256)
    at: str | None = None
    kiosk: str | None = None
    #: Uses the bridge has stored for the code (a visit card's); absent means one.
    count: int | None = Field(default=None, ge=1, le=1_000_000)


class CouponsUsed(_CommandData):
    """Many `coupon.used`s in one command, applied together, each as on its own."""

    coupons: list[CouponUsed] = Field(min_length=1, max_length=1000)


class Reward(BaseModel):
    """One reward of the catalogue: what it is called and what it costs."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: str = Field(pattern=TOKEN_PATTERN)
    name: str = Field(min_length=1, max_length=100)
    #: The English name, when the shop gave one (the screen shows the customer's language).
    name_en: str | None = Field(default=None, max_length=100)
    points: int = Field(ge=1, le=10**9)
    #: How many are left across the store; None: no limit.
    stock: int | None = Field(default=None, ge=0, le=10**9)


class RewardsSet(_CommandData):
    rewards: list[Reward] = Field(default_factory=list, max_length=100)


class PoolCode(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    id: str = Field(min_length=1, max_length=256)
    code: str = Field(min_length=1, max_length=2048)
    #: The link printed with it (a member's own page), when there is one.
    url: str | None = Field(default=None, max_length=2048)


class PoolRefill(_CommandData):
    """More pre-signed codes for this kiosk: `voucher` codes of one reward (coupon codes
    of campaign `reward:<id>`), or `member` codes for people who join at the door."""

    kind: Literal["voucher", "member"]
    reward: str | None = Field(default=None, pattern=TOKEN_PATTERN)
    codes: list[PoolCode] = Field(max_length=200)


COMMAND_DATA: dict[str, type[BaseModel]] = {
    CommandName.PREORDER_UPSERT: PreorderUpsert,
    CommandName.PREORDER_CANCEL: PreorderCancel,
    CommandName.CODE_REVOKE: CodeRevoke,
    CommandName.MEMBER_UPSERT: MemberUpsert,
    CommandName.LOCKER_OPEN: LockerOpen,
    CommandName.COUPON_USED: CouponUsed,
    CommandName.REWARDS_SET: RewardsSet,
    CommandName.POOL_REFILL: PoolRefill,
    CommandName.MEMBERS_UPSERT: MembersUpsert,
    CommandName.COUPONS_USED: CouponsUsed,
}


def command_data(name: str, data: dict[str, Any]) -> BaseModel | None:
    """The checked data of a known command; None for a name this version does not know.

    Raises ProtocolError for a known command with bad data.
    """
    model = COMMAND_DATA.get(name)
    if model is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"{name}: {_first_error(exc)}") from None


class Status(BaseModel):
    """Retained kiosk status; also its Last Will (`{"online": false}` only)."""

    model_config = ConfigDict(extra="allow")

    online: bool
    ts: str | None = None
    version: str | None = None
    last_cmd_seq: int | None = None
    outbox: int | None = None
    lockers: Any = None
    printer: Any = None
    camera: Any = None


def _load_json(payload: bytes | bytearray | str) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {type(exc).__name__}") from None


def parse_events(payload: bytes | bytearray | str) -> tuple[list[Event], list[str]]:
    """Parse one envelope or an array of them.

    Returns the valid events and a description of each invalid element, so one bad
    envelope in a batch does not cost the good ones their delivery.
    """
    raw = _load_json(payload)
    items = raw if isinstance(raw, list) else [raw]
    events: list[Event] = []
    errors: list[str] = []
    for i, item in enumerate(items):
        try:
            events.append(Event.model_validate(item))
        except ValidationError as exc:
            errors.append(f"element {i}: {_first_error(exc)}")
    return events, errors


def parse_ack(payload: bytes | bytearray | str) -> Ack:
    try:
        return Ack.model_validate(_load_json(payload))
    except ValidationError as exc:
        raise ProtocolError(_first_error(exc)) from None


def parse_command(payload: bytes | bytearray | str) -> Command:
    try:
        return Command.model_validate(_load_json(payload))
    except ValidationError as exc:
        raise ProtocolError(_first_error(exc)) from None


def parse_status(payload: bytes | bytearray | str) -> Status:
    try:
        return Status.model_validate(_load_json(payload))
    except ValidationError as exc:
        raise ProtocolError(_first_error(exc)) from None


def dumps(obj: BaseModel | list[BaseModel] | dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON for the wire."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json", exclude_none=True)
    elif isinstance(obj, list):
        return ("[" + ",".join(o.model_dump_json(exclude_none=True) for o in obj) + "]").encode()
    return json.dumps(obj, separators=(",", ":")).encode()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(root)"
    return f"{loc}: {err['msg']}"
