"""The bridge's tables.

Changing one needs a migration in `cloud_bridge/migrations/versions/` (docs/upgrading.md):
shops keep their data across upgrades, and a test upgrades the previous release's
database on SQLite and PostgreSQL and compares the result with these tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from o2o_protocol.messages import EventType


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no zone type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the bridge stores UTC-aware times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


#: Coupon ids the bridge can pass on to other doors (`coupon.used` takes up to 256
#: characters; the codes it issues have 1-64).
COUPON_ID = 256


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_store_ts", "store", "ts"),
        Index("ix_events_type", "type"),
        Index("ix_events_store_coupon", "store", "coupon_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    store: Mapped[str] = mapped_column(String(64))
    kiosk: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime]
    data: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]
    #: A redemption's `data.coupon_id` (`coupon_of`), so finding a coupon's redemptions
    #: is an index range, not a look into every redemption's JSON.
    coupon_id: Mapped[str | None] = mapped_column(String(COUPON_ID))


def coupon_of(type_: str, data: Any) -> str | None:
    """What `events.coupon_id` holds: a `coupon.redeemed` event's `data.coupon_id` when it
    is text of at most `COUPON_ID` characters, else NULL. Kiosks write a code's id there,
    text; a number or a longer text is no coupon the bridge could tell other doors of, so
    such a redemption is counted among the redemptions but never as a double one."""
    if type_ != EventType.COUPON_REDEEMED or not isinstance(data, dict):
        return None
    coupon = data.get("coupon_id")
    return coupon if isinstance(coupon, str) and len(coupon) <= COUPON_ID else None


class KioskRow(Base):
    __tablename__ = "kiosks"

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    kiosk: Mapped[str] = mapped_column(String(64), primary_key=True)
    online: Mapped[bool] = mapped_column(Boolean)
    last_status: Mapped[dict[str, Any]]
    last_seen: Mapped[datetime | None]


class CommandRow(Base):
    """Commands for a kiosk, numbered per kiosk; re-sent until its status reports them."""

    __tablename__ = "commands"

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    kiosk: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class RejectedEventRow(Base):
    """Quarantine: events the database refused. Acked to the kiosk (retrying cannot help
    and would block every later event), kept here for the owner to see."""

    __tablename__ = "rejected_events"
    __table_args__ = (Index("ix_rejected_events_store_received", "store", "received_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    store: Mapped[str] = mapped_column(String(64))
    kiosk: Mapped[str] = mapped_column(String(64))
    raw: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime]


#: Member ids come from codes (up to 256 characters, docs/codes.md).
MEMBER_ID = 256


class MemberRow(Base):
    """A member of the store. `points` is the sum of the member's ledger entries, kept
    here in the same transaction as each entry so a balance is one read (docs/members.md)."""

    __tablename__ = "members"

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(MEMBER_ID), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(100))
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    visits: Mapped[int] = mapped_column(Integer, default=0)
    last_visit: Mapped[datetime | None]
    joined_at: Mapped[datetime]
    #: Where the member joined: `kiosk:<id>` or `online`.
    source: Mapped[str] = mapped_column(String(80))
    referrer: Mapped[str | None] = mapped_column(String(MEMBER_ID))
    updated_at: Mapped[datetime]


class LedgerRow(Base):
    """One earn or spend. `ref` (`event:<id>` or `key:<Idempotency-Key>`) is unique per
    store, so a re-sent event or a repeated request never counts twice."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("store", "ref", name="uq_ledger_entries_store_ref"),
        Index("ix_ledger_entries_store_member", "store", "member", "id"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    store: Mapped[str] = mapped_column(String(64))
    member: Mapped[str] = mapped_column(String(MEMBER_ID))
    delta: Mapped[int] = mapped_column(BigInteger)
    #: `checkin` (a counted visit, even one that earned nothing), `reward:<id>`,
    #: `referral:<member>`, or the online side's own words.
    reason: Mapped[str] = mapped_column(String(200))
    #: `kiosk:<id>` or `online`.
    source: Mapped[str] = mapped_column(String(80))
    ref: Mapped[str] = mapped_column(String(300))
    #: When it happened (the event's `ts`, or when the request arrived).
    at: Mapped[datetime]
    #: This entry took the balance below zero (two doors offline spent the same points).
    overdraft: Mapped[bool] = mapped_column(Boolean, default=False)
    recorded_at: Mapped[datetime]


class RewardRow(Base):
    """A reward of the store's catalogue; `stock` None means no limit."""

    __tablename__ = "rewards"

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str | None] = mapped_column(String(100))
    points: Mapped[int] = mapped_column(BigInteger)
    stock: Mapped[int | None] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class PoolCodeRow(Base):
    """A code signed in advance and handed to one kiosk (docs/members.md, code pools):
    a reward voucher or a member card for someone who joins at the door."""

    __tablename__ = "pool_codes"
    __table_args__ = (Index("ix_pool_codes_kiosk", "store", "kiosk", "kind", "reward"),)

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(MEMBER_ID), primary_key=True)
    kiosk: Mapped[str] = mapped_column(String(64))
    #: `voucher` or `member`.
    kind: Mapped[str] = mapped_column(String(16))
    reward: Mapped[str | None] = mapped_column(String(64))
    code: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    issued_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_event: Mapped[str | None] = mapped_column(String(64))


class CampaignRow(Base):
    """A campaign (docs/campaigns.md): what its codes are worth, how many there are, when
    they are valid. `issued` counts the codes handed out, kept here so a request for the
    last ones is decided by one conditional update, exact under concurrent requests."""

    __tablename__ = "campaigns"

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    #: `coupon`, `group_buy`, `flash_sale` or `visit_card`.
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(100))
    #: How many codes there are at most; None: no limit.
    quantity: Mapped[int | None] = mapped_column(BigInteger)
    issued: Mapped[int] = mapped_column(BigInteger, default=0)
    #: How many codes one member may get; None: no limit.
    per_member: Mapped[int | None] = mapped_column(Integer)
    #: Uses of one code (a visit card); None: once.
    uses: Mapped[int | None] = mapped_column(Integer)
    #: Valid hours, `[{"days": [1..7], "from": "HH:MM", "to": "HH:MM"}]`, shop time.
    hours: Mapped[list[Any] | None] = mapped_column(JSON)
    starts: Mapped[datetime | None]
    ends: Mapped[datetime | None]
    created_at: Mapped[datetime]


class IssuedCodeRow(Base):
    """Every code issued for a campaign: which, to whom, when."""

    __tablename__ = "issued_codes"
    __table_args__ = (Index("ix_issued_codes_campaign", "store", "campaign", "member"),)

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(MEMBER_ID), primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64))
    member: Mapped[str | None] = mapped_column(String(MEMBER_ID))
    issued_at: Mapped[datetime]
    expires: Mapped[datetime | None]


class ActivityRow(Base):
    """An in-store activity members sign up for online; `signed_up` counts the places
    taken (a cancelled sign-up gives its place back), decided like `issued` above."""

    __tablename__ = "activities"

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime]
    duration_min: Mapped[int] = mapped_column(Integer, default=60)
    capacity: Mapped[int] = mapped_column(Integer)
    signed_up: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class SignupRow(Base):
    """One place at an activity; its id is the ticket's (a reservation code's) id."""

    __tablename__ = "signups"
    __table_args__ = (Index("ix_signups_activity", "store", "activity"),)

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(MEMBER_ID), primary_key=True)
    activity: Mapped[str] = mapped_column(String(64))
    member: Mapped[str | None] = mapped_column(String(MEMBER_ID))
    name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    cancelled_at: Mapped[datetime | None]
    #: When the ticket was scanned at the door (`reservation.arrived`).
    arrived_at: Mapped[datetime | None]


class EventCountRow(Base):
    """A roll-up for the insights (`rollup.py`): how many events of a type count in a UTC
    quarter-hour (check-ins that counted, redemptions, reservations arrived, pickups,
    joins), kept in the transaction that stores them."""

    __tablename__ = "event_counts"
    __table_args__ = ({"sqlite_with_rowid": False},)  # SQLite: rows in key order

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The start of the UTC quarter-hour.
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(64), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)


class MemberVisitRow(Base):
    """A roll-up for the insights (`rollup.py`): a member's counted check-ins and joins in
    a UTC quarter-hour, and the last of those check-ins."""

    __tablename__ = "member_visits"
    __table_args__ = ({"sqlite_with_rowid": False},)  # SQLite: rows in key order

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    member: Mapped[str] = mapped_column(String(MEMBER_ID), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    visits: Mapped[int] = mapped_column(Integer)
    joins: Mapped[int] = mapped_column(Integer)
    last_visit: Mapped[datetime | None]


class MemberActivityRow(Base):
    """A roll-up for the insights (`rollup.py`): when a member was first seen (a counted
    check-in or a join), first and last visited, the visit before the last, and how many
    counted check-ins: one row per member answers a range that ends after them."""

    __tablename__ = "member_activity"
    __table_args__ = ({"sqlite_with_rowid": False},)  # SQLite: rows in key order

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    member: Mapped[str] = mapped_column(String(MEMBER_ID), primary_key=True)
    first_seen: Mapped[datetime]
    first_visit: Mapped[datetime | None]
    last_visit: Mapped[datetime | None]
    prev_visit: Mapped[datetime | None]
    visits: Mapped[int] = mapped_column(Integer)


class LeaseRow(Base):
    """Who runs a store's jobs done once (stats, discovery, re-sends, catch-up) among the
    workers of a service (`cloud_bridge/leases.py`): held until `expires_at` (Unix time,
    seconds) unless renewed before."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)


class WorkerRow(Base):
    """Each worker's heartbeat per store, with its ingest lag: the lease holder puts every
    live worker's in the store's stats document."""

    __tablename__ = "workers"

    store: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[float] = mapped_column(Float)
    lag: Mapped[dict[str, Any]]
