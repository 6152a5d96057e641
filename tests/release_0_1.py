"""Release 0.1's database, as that release made it: for the migration tests.

Below the marker, `cloud_bridge/db/tables.py` of release 0.1 (commit fd5a573), copied
verbatim with its own MetaData, so the tests upgrade exactly what shops have, whatever
the current tables become. `make_release_0_1` creates the tables the way 0.1 did
(`metadata.create_all`, no Alembic) and fills them as a shop that ran it for a while.
"""

# fmt: off
# --- release 0.1: cloud_bridge/db/tables.py, verbatim ------------------------------------
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Dialect, Index, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


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


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_store_ts", "store", "ts"),
        Index("ix_events_type", "type"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    store: Mapped[str] = mapped_column(String(64))
    kiosk: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime]
    data: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]


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
# --- end of release 0.1's tables -------------------------------------------------------
# fmt: on

from dataclasses import dataclass  # noqa: E402
from datetime import timedelta  # noqa: E402

from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

STORE = "s1"
#: When the shop's first event happened.
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Expected:
    """A member the upgrade must carry over."""

    points: int
    visits: int
    last_visit: datetime | None
    joined_at: datetime
    source: str
    name: str | None


def _at(days: float, hours: float = 0) -> datetime:
    return START + timedelta(days=days, hours=hours)


def _event(
    n: int, kiosk: str, type: str, at: datetime, data: dict[str, Any], *, store: str = STORE
) -> dict[str, Any]:
    """An `events` row, as 0.1 stored it (its columns)."""
    return {
        "id": f"0193{n:04d}-0000-7000-8000-00000000{n:04d}",
        "store": store,
        "kiosk": kiosk,
        "seq": n,
        "type": type,
        "ts": at,
        "data": data,
        "received_at": at + timedelta(seconds=2),
    }


def _checkin(
    n: int, kiosk: str, at: datetime, member: str, name: str, **data: Any
) -> dict[str, Any]:
    return _event(n, kiosk, "checkin", at, {"member_id": member, "name": name, **data})


def _redeemed(
    n: int, kiosk: str, at: datetime, coupon: Any, *, store: str = STORE, **data: Any
) -> dict[str, Any]:
    return _event(
        n, kiosk, "coupon.redeemed", at, {"coupon_id": coupon, "value": "10%", **data}, store=store
    )


#: The events of the shop: two kiosks, check-ins (one within the cool-down, one from an
#: older kiosk that wrote no `counted`, one from a clock far ahead), a join, coupons (some
#: redeemed twice, a visit card used too often), refusals, another store.
EVENTS = [
    _checkin(1, "k1", _at(0), "ada", "Ada", visits=1, points_earned=10, points=10, counted=True),
    _checkin(
        2, "k1", _at(0, 0.2), "ada", "Ada", visits=1, points_earned=0, points=10, counted=False
    ),
    _checkin(3, "k2", _at(3), "ada", "Ada L.", visits=2, points_earned=10, points=20, counted=True),
    _checkin(4, "k2", _at(5), "bob", "Bob", visits=1, points_earned=5, points=5),
    _event(
        5,
        "k1",
        "member.joined",
        _at(6),
        {
            "member_id": "cleo",
            "phone_hash": "h1",
            "join_url": "https://shop.example/j",
            "known": False,
        },
    ),
    _event(
        6,
        "k1",
        "coupon.redeemed",
        _at(7),
        {"coupon_id": "cp1", "campaign": "autumn", "value": "10%"},
    ),
    _event(
        7, "k2", "scan.rejected", _at(7, 1), {"reason": "expired", "detail": "expired 2026-11-01"}
    ),
    _checkin(8, "k1", _at(9), "ada", "Ada L.", visits=3, points_earned=10, points=30, counted=True),
    _checkin(
        9, "k1", _at(9, 1), "cleo", "Cleo", visits=1, points_earned=10, points=10, counted=True
    ),
    _event(10, "k2", "pickup.completed", _at(10), {"order": "A17", "locker": 3}),
    _event(
        11,
        "k9",
        "checkin",
        _at(10),
        {"member_id": "ada", "name": "Ada (s2)", "points_earned": 7, "counted": True},
        store="s2",
    ),
    # A kiosk clock in the year 2999: the visit happened when it arrived.
    {
        **_checkin(12, "k2", _at(11), "bob", "Bob", points_earned=5, counted=True),
        "ts": datetime(2999, 1, 1, tzinfo=UTC),
    },
    # Day 12: coupons redeemed twice (cp1 first on day 7), a visit card of two uses used
    # three times, a refusal that names a coupon, redemptions whose coupon is no text of at
    # most 256 characters (or none), the same coupon at another store.
    _redeemed(13, "k2", _at(12), "cp1"),
    _redeemed(14, "k1", _at(12, 1), "cp2"),
    _redeemed(15, "k2", _at(12, 2), "cp2"),
    _redeemed(16, "k1", _at(12, 3), "card-1", use=1, uses=2),
    _redeemed(17, "k2", _at(12, 4), "card-1", use=2, uses=2),
    _redeemed(18, "k1", _at(12, 5), "card-1", use=3, uses=2),
    _event(19, "k1", "scan.rejected", _at(12, 6), {"reason": "already_used", "coupon_id": "cp2"}),
    _redeemed(20, "k1", _at(12, 7), 42),
    _event(21, "k2", "coupon.redeemed", _at(12, 8), {"value": "10%"}),
    _redeemed(22, "k1", _at(12, 9), "x" * 300),
    _redeemed(23, "k9", _at(12, 10), "cp2", store="s2"),
]

#: What the upgrade must make of them, per (store, member).
MEMBERS = {
    (STORE, "ada"): Expected(30, 3, _at(9), _at(0), "kiosk:k1", "Ada L."),
    (STORE, "bob"): Expected(10, 2, _at(11, 2 / 3600), _at(5), "kiosk:k2", "Bob"),
    (STORE, "cleo"): Expected(10, 1, _at(9, 1), _at(6), "kiosk:k1", "Cleo"),
    ("s2", "ada"): Expected(7, 1, _at(10), _at(10), "kiosk:k9", "Ada (s2)"),
}
#: The events that become ledger entries (counted check-ins), by number.
COUNTED = [1, 3, 4, 8, 9, 11, 12]


def event_id(n: int) -> str:
    return str(EVENTS[n - 1]["id"])


def make_release_0_1(url: str) -> None:
    """Create release 0.1's tables at `url` (as 0.1 did) and fill them."""
    engine = create_engine(url)
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session, session.begin():
            session.add_all([EventRow(**e) for e in EVENTS])
            session.add_all(
                [
                    KioskRow(
                        store=STORE,
                        kiosk="k1",
                        online=True,
                        last_status={"online": True, "last_cmd_seq": 2, "printer": "ok"},
                        last_seen=_at(10),
                    ),
                    KioskRow(
                        store=STORE,
                        kiosk="k2",
                        online=False,
                        last_status={"online": False},
                        last_seen=_at(9),
                    ),
                    CommandRow(
                        store=STORE,
                        kiosk="k1",
                        seq=1,
                        name="preorder.upsert",
                        data={"order": "A17", "name": "Ada", "locker": 3},
                        created_at=_at(8),
                    ),
                    CommandRow(
                        store=STORE,
                        kiosk="k1",
                        seq=2,
                        name="coupon.used",
                        data={"id": "cp1", "kiosk": "k2"},
                        created_at=_at(8, 1),
                    ),
                    CommandRow(
                        store=STORE,
                        kiosk="k2",
                        seq=1,
                        name="code.revoke",
                        data={"id": "staff-7"},
                        created_at=_at(8, 2),
                    ),
                    RejectedEventRow(
                        id="0193bad0-0000-7000-8000-000000000001",
                        store=STORE,
                        kiosk="k2",
                        raw='{"id": "0193bad0", "data": {"note": "\\u0000"}}',
                        error="data holds a NUL character",
                        received_at=_at(4),
                    ),
                ]
            )
    finally:
        engine.dispose()
