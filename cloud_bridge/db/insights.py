"""The queries behind `GET /api/v1/insights` (docs/insights.md).

A year of a busy shop is some 200k events, so everything that scales with events is
counted by the database: events are grouped by type and quarter of a UTC hour (a few
thousand rows for a year, on the (store, ts) index), and the service moves each quarter
into the shop's own hour in Python, which works for every time zone (even +05:45) on
SQLite, which knows none. Members are grouped by member id in one pass. Only what is
small by nature (campaign codes, preorder commands, pickups of the range) is read as rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    or_,
    select,
    type_coerce,
)

from cloud_bridge.db.figures import ahead, counted, in_period, rating_summary
from cloud_bridge.db.repository import Repository
from cloud_bridge.db.tables import CommandRow, EventRow, IssuedCodeRow, MemberRow, UTCDateTime
from o2o_protocol.messages import CommandName, EventType

#: The event types the hourly counts are made of.
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


def _quarter(dialect: str, when: Any) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """`when` as (its UTC hour 'YYYY-MM-DD HH', its quarter 0-3)."""
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
        return func.substr(when, 1, 13), cast(func.substr(when, 15, 2), Integer) // 15
    utc = func.timezone("UTC", when)
    return (
        func.to_char(utc, "YYYY-MM-DD HH24"),
        cast(func.to_char(utc, "MI"), Integer) // 15,
    )


def _member_id() -> ColumnElement[Any]:
    return EventRow.data["member_id"].as_string()


class InsightQueries:
    """One store's figures over a range of UTC instants [start, end)."""

    def __init__(self, repo: Repository, store: str) -> None:
        self.repo = repo
        self.store = store

    def _session(self) -> Any:
        return self.repo._sessions()

    def quarters(self, start: datetime, end: datetime) -> list[tuple[str, datetime, int]]:
        """(event type, UTC quarter-hour, how many) of the counted check-ins, redemptions,
        arrivals, pickups and joins of [start, end), by when they happened (`ts`; when
        received, for a kiosk clock a day ahead, like today's figures)."""
        with self._session() as session:
            dialect = session.get_bind().dialect.name
            when = case((ahead(dialect), EventRow.received_at), else_=EventRow.ts)
            hour, quarter = _quarter(dialect, when)
            is_checkin = EventRow.type == EventType.CHECKIN.value
            stmt = (
                select(EventRow.type, hour, quarter, func.count())
                .where(
                    EventRow.store == self.store,
                    in_period(dialect, start, end),
                    EventRow.type.in_(COUNTED_TYPES),
                    or_(~is_checkin, counted(dialect)),
                )
                .group_by(EventRow.type, hour, quarter)
            )
            out = []
            for type_, h, q, n in session.execute(stmt):
                at = datetime.strptime(h, "%Y-%m-%d %H").replace(tzinfo=UTC)
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
                    EventRow.store == self.store,
                    EventRow.ts < end,
                    EventRow.type.in_((EventType.CHECKIN.value, EventType.MEMBER_JOINED.value)),
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
        """Per order picked up in [start, end): minutes from its first `locker.loaded` to
        its first `pickup.completed`."""
        with self._session() as session:
            order = EventRow.data["order"].as_string()
            done = (
                select(order.label("order"), func.min(EventRow.ts).label("at"))
                .where(
                    EventRow.store == self.store,
                    EventRow.type == EventType.PICKUP_COMPLETED.value,
                    EventRow.ts >= start,
                    EventRow.ts < end,
                    order.is_not(None),
                )
                .group_by(order)
            )
            done_rows = {str(o): at for o, at in session.execute(done)}
            if not done_rows:
                return []
            loaded = (
                select(order, func.min(EventRow.ts))
                .where(
                    EventRow.store == self.store,
                    EventRow.type == EventType.LOCKER_LOADED.value,
                    EventRow.ts < end,
                    order.in_(list(done_rows)),
                )
                .group_by(order)
            )
            leads = []
            for o, at in session.execute(loaded):
                picked = done_rows.get(str(o))
                if picked is not None and picked >= at:
                    leads.append((picked - at).total_seconds() / 60)
            return leads

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
        with self._session() as session:
            dialect = session.get_bind().dialect.name
            where: Sequence[ColumnElement[bool]] = (
                EventRow.store == self.store,
                in_period(dialect, start, end),
            )
            return rating_summary(session, where)
