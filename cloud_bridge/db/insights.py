"""The queries behind `GET /api/v1/insights` (docs/insights.md).

A year of a busy shop is some 200k events, so everything that scales with events is
counted by the database: events are grouped by type and quarter of a UTC hour (a few
thousand rows for a year, on the (store, ts) index), and the service moves each quarter
into the shop's own hour in Python, which works for every time zone (even +05:45) on
SQLite, which knows none. Members are grouped by member id in one pass. Only what is
small by nature (campaign codes, preorder commands, pickups of the range) is read as rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    type_coerce,
)

from cloud_bridge.db.figures import counted, rating_summary
from cloud_bridge.db.repository import Repository
from cloud_bridge.db.tables import CommandRow, EventRow, IssuedCodeRow, MemberRow, UTCDateTime
from o2o_protocol.messages import CommandName, EventType

#: The event types the hourly counts are made of.
#: How long before the range an order's load is looked for (a pickup's lead time).
LOAD_DAYS = 30
COUNTED_TYPES = (
    EventType.CHECKIN.value,
    EventType.COUPON_REDEEMED.value,
    EventType.RESERVATION_ARRIVED.value,
    EventType.PICKUP_COMPLETED.value,
    EventType.MEMBER_JOINED.value,
)


@dataclass(frozen=True)
class MemberVisits:
    """One member's counted check-ins (and join) up to the end of the range."""

    id: str
    first_seen: datetime  # first counted check-in or join, whichever came first
    first_visit: datetime | None
    last_visit: datetime | None
    visits: int  # counted check-ins up to the end of the range
    visits_in_range: int


@dataclass(frozen=True)
class MemberInfo:
    name: str | None
    points: int


def _quarter(
    dialect: str, when: Any, whole_hours: bool
) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """`when` as (its UTC hour 'YYYY-MM-DD HH', its quarter 0-3; 0 when `whole_hours`:
    a zone a whole number of hours from UTC needs no finer)."""
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
        hour, minute = func.substr(when, 1, 13), cast(func.substr(when, 15, 2), Integer)
    else:
        utc = func.timezone("UTC", when)
        hour, minute = func.to_char(utc, "YYYY-MM-DD HH24"), cast(func.to_char(utc, "MI"), Integer)
    return hour, (literal(0) if whole_hours else minute // 15)


def _scan(dialect: str, column: Any) -> Any:
    """`column` as SQLite may not use an index for (`column || ''`): a range of months
    reads most of the table, and a plain scan of it is several times cheaper there than
    a row looked up per index entry. PostgreSQL's planner knows this by itself."""
    return column + "" if dialect == "sqlite" else column


def _member_id() -> ColumnElement[Any]:
    return EventRow.data["member_id"].as_string()


class InsightQueries:
    """One store's figures over a range of UTC instants [start, end)."""

    def __init__(self, repo: Repository, store: str) -> None:
        self.repo = repo
        self.store = store

    def _session(self) -> Any:
        return self.repo._sessions()

    def quarters(
        self, start: datetime, end: datetime, *, whole_hours: bool = False
    ) -> list[tuple[str, datetime, int]]:
        """(event type, UTC quarter-hour, how many) of the counted check-ins, redemptions,
        arrivals, pickups and joins of [start, end), by when they happened (`ts`); by
        whole UTC hours with `whole_hours`."""
        with self._session() as session:
            dialect = session.get_bind().dialect.name
            hour, quarter = _quarter(dialect, EventRow.ts, whole_hours)
            is_checkin = EventRow.type == EventType.CHECKIN.value
            stmt = (
                select(EventRow.type, hour, quarter, func.count())
                .where(
                    _scan(dialect, EventRow.store) == self.store,
                    EventRow.ts >= start,
                    EventRow.ts < end,
                    _scan(dialect, EventRow.type).in_(COUNTED_TYPES),
                    or_(~is_checkin, counted(dialect)),
                )
                .group_by(EventRow.type, hour, *(() if whole_hours else (quarter,)))
            )
            hours: dict[str, datetime] = {}
            out = []
            for type_, h, q, n in session.execute(stmt):
                at = hours.get(h)
                if at is None:
                    at = hours[h] = datetime.strptime(h, "%Y-%m-%d %H").replace(tzinfo=UTC)
                out.append((str(type_), at + timedelta(minutes=15 * int(q)), int(n)))
            return out

    def member_visits(self, start: datetime, end: datetime) -> list[MemberVisits]:
        """Every member with a counted check-in or a join before `end`, with their
        visits then and within [start, end)."""
        with self._session() as session:
            dialect = session.get_bind().dialect.name
            member = _member_id()
            is_checkin = EventRow.type == EventType.CHECKIN.value
            visit_ts = type_coerce(case((is_checkin, EventRow.ts), else_=None), UTCDateTime)
            stmt = (
                select(
                    member,
                    func.min(EventRow.ts),
                    func.min(visit_ts),
                    func.max(visit_ts),
                    func.sum(case((is_checkin, 1), else_=0)),
                    func.sum(case((and_(is_checkin, EventRow.ts >= start), 1), else_=0)),
                )
                .where(
                    _scan(dialect, EventRow.store) == self.store,
                    EventRow.ts < end,
                    _scan(dialect, EventRow.type).in_(
                        (EventType.CHECKIN.value, EventType.MEMBER_JOINED.value)
                    ),
                    or_(~is_checkin, counted(dialect)),
                    member.is_not(None),
                )
                .group_by(member)
            )
            return [
                MemberVisits(str(m), first, fv, lv, int(n or 0), int(r or 0))
                for m, first, fv, lv, n, r in session.execute(stmt)
            ]

    def members(self, ids: Iterable[str]) -> dict[str, MemberInfo]:
        ids = list(ids)
        if not ids:
            return {}
        stmt = select(MemberRow.id, MemberRow.name, MemberRow.points).where(
            MemberRow.store == self.store, MemberRow.id.in_(ids)
        )
        with self._session() as session:
            return {i: MemberInfo(n, int(p or 0)) for i, n, p in session.execute(stmt)}

    def points_outstanding(self) -> int:
        """The members' positive balances now, summed (what the shop still owes)."""
        stmt = select(func.coalesce(func.sum(MemberRow.points), 0)).where(
            MemberRow.store == self.store, MemberRow.points > 0
        )
        with self._session() as session:
            return int(session.scalar(stmt) or 0)

    def pickup_lead_minutes(self, start: datetime, end: datetime) -> list[float]:
        """Per order picked up in [start, end): minutes from its first `locker.loaded`
        (up to LOAD_DAYS before the range) to its first `pickup.completed`."""
        dialect = self.repo._dialect
        order = EventRow.data["order"].as_string()
        stmt = (
            select(order, EventRow.type, func.min(EventRow.ts))
            .where(
                _scan(dialect, EventRow.store) == self.store,
                EventRow.ts >= start - timedelta(days=LOAD_DAYS),
                EventRow.ts < end,
                _scan(dialect, EventRow.type).in_(
                    (EventType.LOCKER_LOADED.value, EventType.PICKUP_COMPLETED.value)
                ),
                order.is_not(None),
            )
            .group_by(order, EventRow.type)
        )
        loaded: dict[str, datetime] = {}
        done: dict[str, datetime] = {}
        with self._session() as session:
            for o, type_, at in session.execute(stmt):
                (loaded if type_ == EventType.LOCKER_LOADED.value else done)[str(o)] = at
        return [
            (at - loaded[o]).total_seconds() / 60
            for o, at in done.items()
            if start <= at and o in loaded and at >= loaded[o]
        ]

    def preorders(self, start: datetime, end: datetime) -> list[tuple[datetime, dict[str, Any]]]:
        """Each order's first `preorder.upsert` queued in [start, end): (when, its data).
        An order sent to several kiosks counts once."""
        stmt = (
            select(CommandRow.created_at, CommandRow.data)
            .where(
                CommandRow.store == self.store,
                CommandRow.name == CommandName.PREORDER_UPSERT.value,
                CommandRow.created_at >= start,
                CommandRow.created_at < end,
            )
            .order_by(CommandRow.created_at, CommandRow.kiosk, CommandRow.seq)
        )
        seen: set[str] = set()
        out = []
        with self._session() as session:
            for at, data in session.execute(stmt):
                key = str(data.get("order")) if isinstance(data, dict) else ""
                if key in seen or not isinstance(data, dict):
                    continue
                seen.add(key)
                out.append((at, data))
        return out

    def codes_issued(self, start: datetime, end: datetime) -> int:
        """Campaign codes handed out in [start, end)."""
        stmt = select(func.count()).where(
            IssuedCodeRow.store == self.store,
            IssuedCodeRow.issued_at >= start,
            IssuedCodeRow.issued_at < end,
        )
        with self._session() as session:
            return int(session.scalar(stmt) or 0)

    def ratings(self, start: datetime, end: datetime) -> dict[str, Any]:
        where = (EventRow.store == self.store, EventRow.ts >= start, EventRow.ts < end)
        with self._session() as session:
            return rating_summary(session, where)
