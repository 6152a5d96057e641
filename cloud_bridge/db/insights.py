"""The queries behind `GET /api/v1/insights` (docs/insights.md).

A year of a busy shop is some 200k events, so nothing that scales with events is read
for the hours and the members: they come from the roll-ups the event insert keeps
(`rollup.py`). The counts per type and UTC quarter-hour (grouped by whole hours when the
zone needs no finer: a few thousand rows for a year) are moved into the shop's own hours
by the service in Python, which works for every time zone (even +05:45) on SQLite, which
knows none; the members come back as five numbers and the lapsed list. What is small by
nature (campaign codes, preorder commands, pickups and ratings of the range) is counted
from the events and commands themselves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    case,
    func,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.orm import aliased

from cloud_bridge.db.figures import rating_summary
from cloud_bridge.db.repository import Repository
from cloud_bridge.db.tables import (
    CommandRow,
    EventCountRow,
    EventRow,
    IssuedCodeRow,
    MemberActivityRow,
    MemberRow,
    MemberVisitRow,
    UTCDateTime,
)
from o2o_protocol.messages import CommandName, EventType

#: How long before the range an order's load is looked for (a pickup's lead time).
LOAD_DAYS = 30


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


#: A range longer than this reads its few event types by the type index on SQLite.
LONG_RANGE = timedelta(days=62)


def _store_of(dialect: str, start: datetime, end: datetime) -> Any:
    """`events.store` as the filter of a range's few event types (ratings, loads and
    pickups). Over months, SQLite must not take the (store, ts) index, which reads every
    event of the range to keep a tenth of them: written as `store || ''` it takes the
    type index instead (a year: 5x faster). A shorter range reads its days by (store, ts).
    PostgreSQL's planner weighs this by itself."""
    long = dialect == "sqlite" and end - start > LONG_RANGE
    return EventRow.store + "" if long else EventRow.store


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
        arrivals, pickups and joins of [start, end), from the roll-up (`rollup.py`); by
        whole UTC hours with `whole_hours` (a few thousand rows for a year)."""
        bucket = EventCountRow.bucket
        where = (EventCountRow.store == self.store, bucket >= start, bucket < end)
        with self._session() as session:
            if session.get_bind().dialect.name == "sqlite":
                # The stored text ('YYYY-MM-DD HH:MM:…'), cut to its hour or minute and
                # added up here: cheaper than SQLite's sort for a GROUP BY, and each
                # distinct hour is turned into a time once.
                text = type_coerce(bucket, String)
                cut, tail = (13, ":00+00:00") if whole_hours else (16, "+00:00")
                sums: dict[tuple[str, str], int] = defaultdict(int)
                for t, b, n in session.connection().execute(
                    select(EventCountRow.type, text, EventCountRow.events).where(*where)
                ):
                    sums[(t, b[:cut])] += n
                times = {b: datetime.fromisoformat(b + tail) for b in {b for _, b in sums}}
                return [(t, times[b], n) for (t, b), n in sums.items()]
            if not whole_hours:
                rows = session.execute(
                    select(EventCountRow.type, bucket, EventCountRow.events).where(*where)
                )
                return [(str(t), at, int(n)) for t, at, n in rows]
            hour = func.date_trunc("hour", func.timezone("UTC", bucket))
            stmt = (
                select(EventCountRow.type, hour, func.sum(EventCountRow.events))
                .where(*where)
                .group_by(EventCountRow.type, hour)
            )
            return [(str(t), h.replace(tzinfo=UTC), int(n)) for t, h, n in session.execute(stmt)]

    def member_counts(
        self, start: datetime, end: datetime, cutoff: datetime, *, limit: int
    ) -> MemberCounts:
        """Members with a counted check-in or a join before `end`, counted: visited in
        [start, end), new (first check-in or join in it), returning (visited in it and
        before it), visited twice in it, and lapsed (visited before `end`, but last before
        `cutoff`), with the `limit` lapsed ones seen most recently. From the roll-ups
        (`rollup.py`): one row per member says it all for a member not seen since `end`
        (one aggregate row comes back for all of them); a member who came again after
        `end` (a past range) is looked up in `member_visits` as of `end`. All of start,
        end and cutoff are on a quarter-hour (shop midnights are, in every zone)."""
        act = MemberActivityRow
        of_store = act.store == self.store
        quiet = or_(act.last_visit.is_(None), act.last_visit < end)

        def n(condition: ColumnElement[bool]) -> Any:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        summary = select(
            n(and_(act.first_seen >= start, act.first_seen < end)),
            n(and_(quiet, act.last_visit >= start)),
            n(and_(quiet, act.last_visit >= start, act.first_visit < start)),
            n(and_(quiet, act.prev_visit >= start)),
            n(and_(quiet, act.last_visit < cutoff)),
        ).where(of_store)
        quiet_lapsed = (
            select(act.member, act.last_visit, act.visits)
            .where(of_store, act.last_visit < cutoff)
            .order_by(act.last_visit.desc(), act.member.desc())
            .limit(limit)
        )
        came_back = self._as_of(end)
        with self._session() as session:
            new, visited, returning, repeat, lapsed_n = session.execute(summary).one()
            lapsed = [(at, str(m), int(v)) for m, at, v in session.execute(quiet_lapsed)]
            for m, first_visit, last, prev, visits in session.execute(came_back):
                if last is None:  # no visit before the range's end
                    continue
                last, prev = _utc(last), None if prev is None else _utc(prev)
                if last >= start:
                    visited += 1
                    returning += first_visit is not None and _utc(first_visit) < start
                    repeat += prev is not None and prev >= start
                elif last < cutoff:
                    lapsed_n += 1
                    lapsed.append((last, str(m), int(visits)))
        lapsed.sort(reverse=True)
        return MemberCounts(
            int(visited),
            int(new),
            int(returning),
            int(repeat),
            int(lapsed_n),
            [(m, at, v) for at, m, v in lapsed[:limit]],
        )

    def _as_of(self, end: datetime) -> Any:
        """Members who visited again on or after `end`, as they stood before it: first
        visit, last and previous visit before `end` (the previous one as the last when
        two fell in its quarter-hour), and their visits before it. A few index look-ups
        each in `member_visits` (newest first from `end`)."""
        act, mv = MemberActivityRow, aliased(MemberVisitRow)

        def back(column: Any, offset: int = 0) -> Any:
            return (
                select(column)
                .where(
                    mv.store == act.store,
                    mv.member == act.member,
                    mv.bucket < end,
                    mv.visits > 0,
                )
                .order_by(mv.bucket.desc())
                .limit(1)
                .offset(offset)
                .scalar_subquery()
            )

        after = (
            select(func.coalesce(func.sum(mv.visits), 0))
            .where(mv.store == act.store, mv.member == act.member, mv.bucket >= end)
            .scalar_subquery()
        )
        last = back(mv.last_visit)
        prev = case((back(mv.visits) >= 2, last), else_=back(mv.last_visit, 1))
        return select(
            act.member,
            act.first_visit,
            type_coerce(last, UTCDateTime),
            type_coerce(prev, UTCDateTime),
            act.visits - after,
        ).where(act.store == self.store, act.last_visit >= end)

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
                _store_of(dialect, start, end) == self.store,
                EventRow.ts >= start - timedelta(days=LOAD_DAYS),
                EventRow.ts < end,
                EventRow.type.in_(
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
        store = _store_of(self.repo._dialect, start, end)
        where = (store == self.store, EventRow.ts >= start, EventRow.ts < end)
        with self._session() as session:
            return rating_summary(session, where)
