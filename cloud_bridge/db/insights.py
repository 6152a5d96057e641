"""The queries behind `GET /api/v1/insights` (docs/insights.md).

A year of a busy shop is some 200k events, so everything that scales with events is
counted by the database: events are grouped by type and quarter of a UTC hour (a few
thousand rows for a year, on the (store, ts) index), and the service moves each quarter
into the shop's own hour in Python, which works for every time zone (even +05:45) on
SQLite, which knows none. Members are grouped by member id in one pass. Only what is
small by nature (campaign codes, preorder commands, pickups of the range) is read as rows.
"""

from __future__ import annotations

from collections import defaultdict
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
class MemberCounts:
    """The members of a range (see `InsightQueries.member_counts`)."""

    visited: int
    new: int
    returning: int
    repeat: int  # visited at least twice in the range
    lapsed: int
    #: The lapsed members seen most recently: (id, last visit, visits), newest first.
    lapsed_first: list[tuple[str, datetime, int]]


@dataclass(frozen=True)
class MemberInfo:
    name: str | None
    points: int


def _quarter(
    dialect: str, when: Any, whole_hours: bool
) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """`when` as (its UTC hour, its quarter 0-3). The hour is text 'YYYY-MM-DD HH' on
    SQLite, a timestamp without zone on PostgreSQL; the quarter is 0 with `whole_hours`
    (a zone a whole number of hours from UTC needs no finer)."""
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC.
        hour, minute = func.substr(when, 1, 13), cast(func.substr(when, 15, 2), Integer)
    else:
        # A UTC wall-clock timestamp (no zone) truncated to its hour: cheaper than text.
        utc = func.timezone("UTC", when)
        hour, minute = func.date_trunc("hour", utc), cast(func.extract("minute", utc), Integer)
    return hour, (literal(0) if whole_hours else minute // 15)


def _scan(dialect: str, column: Any) -> Any:
    """`column` as SQLite may not use an index for (`column || ''`): a range of months
    reads most of the table, and a plain scan of it is several times cheaper there than
    a row looked up per index entry. PostgreSQL's planner knows this by itself."""
    return column + "" if dialect == "sqlite" else column


def _utc(value: Any) -> datetime:
    """A time as the database gave it raw: SQLite's text, PostgreSQL's datetime."""
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


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
                    at = hours[h] = (
                        h.replace(tzinfo=UTC)
                        if isinstance(h, datetime)
                        else datetime.strptime(h, "%Y-%m-%d %H").replace(tzinfo=UTC)
                    )
                out.append((str(type_), at + timedelta(minutes=15 * int(q)), int(n)))
            return out

    def member_counts(
        self, start: datetime, end: datetime, cutoff: datetime, *, limit: int
    ) -> MemberCounts:
        """Members with a counted check-in or a join before `end`, counted: visited in
        [start, end), new (first check-in or join in it), returning (visited in it and
        before it), visited twice in it, and lapsed (visited, but last before `cutoff`),
        with the `limit` lapsed ones seen most recently. Decided in SQL per member, so a
        year's thousands of members come back as small numbers."""
        with self._session() as session:
            dialect = session.get_bind().dialect.name
            member = _member_id()
            is_checkin = EventRow.type == EventType.CHECKIN.value
            visit_ts = type_coerce(case((is_checkin, EventRow.ts), else_=None), UTCDateTime)
            last = func.max(visit_ts)
            stmt = (
                select(
                    member,
                    case((func.min(EventRow.ts) >= start, 1), else_=0),
                    case((func.min(visit_ts) < start, 1), else_=0),
                    # Raw (no conversion): only the few listed are turned into times.
                    case((last < cutoff, last), else_=None),
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
                )
                .group_by(member)
            )
            visited = new_ = returning = repeat = 0
            lapsed: list[tuple[Any, str, int]] = []
            for m, new, before, gone, n, r in session.execute(stmt):
                if m is None:  # no member id (filtered here: one JSON read less a row)
                    continue
                new_ += new
                if r:
                    visited += 1
                    returning += before
                    repeat += r >= 2
                if gone is not None and n:
                    lapsed.append((gone, str(m), int(n)))
        lapsed.sort(reverse=True)
        return MemberCounts(
            visited,
            new_,
            returning,
            repeat,
            len(lapsed),
            [(m, _utc(gone), n) for gone, m, n in lapsed[:limit]],
        )

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
        (up to LOAD_DAYS before the range) to its first `pickup.completed`, worked out
        by the database (one number per order comes back)."""
        dialect = self.repo._dialect
        order = EventRow.data["order"].as_string()
        loaded_type = EventRow.type == EventType.LOCKER_LOADED.value

        def first(loaded: bool) -> Any:
            when = case((loaded_type if loaded else ~loaded_type, EventRow.ts), else_=None)
            return type_coerce(func.min(type_coerce(when, UTCDateTime)), UTCDateTime)

        loaded_at, done_at = first(True), first(False)
        if dialect == "sqlite":
            minutes: Any = (func.julianday(done_at) - func.julianday(loaded_at)) * 1440.0
        else:
            minutes = func.extract("epoch", done_at - loaded_at) / 60.0
        stmt = (
            select(minutes)
            .where(
                _scan(dialect, EventRow.store) == self.store,
                EventRow.ts >= start - timedelta(days=LOAD_DAYS),
                EventRow.ts < end,
                _scan(dialect, EventRow.type).in_(
                    (EventType.LOCKER_LOADED.value, EventType.PICKUP_COMPLETED.value)
                ),
                order.is_not(None),
            )
            .group_by(order)
            .having(done_at >= start, loaded_at.is_not(None), done_at >= loaded_at)
        )
        with self._session() as session:
            return [float(m) for m in session.execute(stmt).scalars()]

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

    def campaign_redemptions(self) -> dict[str, tuple[int, int]]:
        """Per campaign: its codes' redemptions and how many codes were redeemed (a visit
        card's several uses count once there), for all campaigns at once: a redemption is
        a campaign's when its code was issued for it, or else when its data names it.
        Two grouped reads matched here (a join on a JSON field misleads PostgreSQL's
        planner into a nested loop)."""
        coupon = EventRow.data["coupon_id"].as_string()
        named = EventRow.data["campaign"].as_string()
        uses = (
            select(coupon, named, func.count())
            .where(
                EventRow.store == self.store,
                EventRow.type == EventType.COUPON_REDEEMED.value,
            )
            .group_by(coupon, named)
        )
        codes = select(IssuedCodeRow.id, IssuedCodeRow.campaign).where(
            IssuedCodeRow.store == self.store
        )
        totals: dict[str, int] = defaultdict(int)
        redeemed: dict[str, set[str | None]] = defaultdict(set)
        with self._session() as session:
            issued = {str(i): str(c) for i, c in session.execute(codes)}
            for code, name, n in session.execute(uses):
                campaign = issued.get(code) or name
                if campaign is not None:
                    totals[campaign] += int(n)
                    redeemed[campaign].add(code)
        return {c: (n, len(redeemed[c])) for c, n in totals.items()}

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
