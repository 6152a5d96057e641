"""The insights' roll-ups, kept by the event insert (docs/insights.md, "How fast").

A year of a busy shop is some 200k events; the owner's figures need far less: how many
of each kind per quarter of an hour, and per member when they came. So the transaction
that stores new events also adds them to three small tables (`tables.py`):

- `event_counts`: per UTC quarter-hour and type, the check-ins that counted and the
  redemptions, reservations arrived, pickups and joins;
- `member_visits`: per member and UTC quarter-hour, counted check-ins, joins and the
  last check-in's time (for a range that ends before a member's latest visits);
- `member_activity`: per member, the first check-in or join, the first check-in, the
  last two check-ins and how many, so a range that ends after them reads one row per
  member.

Only events that were actually stored count (a re-sent id is skipped by the insert, so it
never reaches here), and each table takes one upsert per batch that adds to what is
there (`count = count + excluded.count`, earliest and latest kept), so two workers
storing at once lose nothing. Rows go in key order: two writers lock them in one order.

An event counts at the time it happened (`ts`), or at `received_at` when it is dated more
than a day after it arrived (a kiosk clock running ahead), as today's figures do.
Quarters, not hours: shop time in a +05:45 zone starts its hours at :15 UTC, and every
shop day then starts on a quarter. The migration that made these tables (0004) fills them
from the events already stored with the same rules, in SQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, case, func, or_
from sqlalchemy.dialects import sqlite

from cloud_bridge.db.bulk import params, recordset_insert
from cloud_bridge.db.records import SKEW
from cloud_bridge.db.tables import MEMBER_ID, EventCountRow, MemberActivityRow, MemberVisitRow
from o2o_protocol.messages import EventType

_QUARTER_S = 900
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHECKIN = EventType.CHECKIN.value
JOINED = EventType.MEMBER_JOINED.value
#: The event types `event_counts` keeps (a check-in only when it counted).
COUNTED_TYPES = (
    CHECKIN,
    EventType.COUPON_REDEEMED.value,
    EventType.RESERVATION_ARRIVED.value,
    EventType.PICKUP_COMPLETED.value,
    JOINED,
)
_COUNTED = frozenset(COUNTED_TYPES)


def happened(ts: datetime, received_at: datetime) -> datetime:
    """When an event counts: `ts`, or `received_at` for one dated ahead of its arrival."""
    return received_at if ts > received_at + SKEW else ts


def counts(type_: str, data: Any) -> bool:
    """An event the figures count: a check-in whose `counted` is true or absent (older
    kiosks), or any redemption, arrival, pickup or join."""
    if type_ == CHECKIN:
        return not isinstance(data, dict) or data.get("counted", True) is True
    return type_ in COUNTED_TYPES


def member_of(data: Any) -> str | None:
    """The member an event names (`member_id`, text of at most 256 characters)."""
    member = data.get("member_id") if isinstance(data, dict) else None
    return member if isinstance(member, str) and len(member) <= MEMBER_ID else None


class _Member:
    """One member's part of a batch, merged like the upsert merges it."""

    __slots__ = ("first_seen", "first_visit", "last", "prev", "visits")

    def __init__(self) -> None:
        self.first_seen: datetime | None = None
        self.first_visit: datetime | None = None
        self.last: datetime | None = None
        self.prev: datetime | None = None
        self.visits = 0

    def add(self, at: datetime, visit: bool) -> None:
        if self.first_seen is None or at < self.first_seen:
            self.first_seen = at
        if not visit:
            return
        self.visits += 1
        if self.first_visit is None or at < self.first_visit:
            self.first_visit = at
        if self.last is None or at >= self.last:
            self.last, self.prev = at, self.last
        elif self.prev is None or at > self.prev:
            self.prev = at


def add(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add newly stored events (the insert's rows: store, type, ts, data, received_at)
    to the roll-ups, one upsert per table, in the caller's transaction."""
    by_quarter: Counter[tuple[str, int, str]] = Counter()  # quarters since 1970
    visits: dict[tuple[str, str, int], list[Any]] = {}
    members: dict[tuple[str, str], _Member] = {}
    for row in rows:
        type_, data = row["type"], row["data"]
        if type_ not in _COUNTED or not counts(type_, data):
            continue
        at = happened(row["ts"], row["received_at"])
        bucket = int(at.timestamp() // _QUARTER_S)
        by_quarter[(row["store"], bucket, type_)] += 1
        member = member_of(data) if type_ in (CHECKIN, JOINED) else None
        if member is None:
            continue
        visit = type_ == CHECKIN
        slot = visits.setdefault((row["store"], member, bucket), [0, 0, None])
        if visit:
            slot[0] += 1
            slot[2] = at if slot[2] is None else max(slot[2], at)
        else:
            slot[1] += 1
        members.setdefault((row["store"], member), _Member()).add(at, visit)
    if not by_quarter:
        return
    dialect = conn.dialect.name
    sql = _upserts(dialect)
    at_ = _stamp if dialect == "sqlite" else _aware
    starts = {q: at_(_EPOCH + timedelta(seconds=q * _QUARTER_S)) for _, q, _ in by_quarter}
    run = _run_sqlite if dialect == "sqlite" else _run_postgresql
    run(
        conn,
        sql[0],
        [
            {"store": s, "bucket": starts[b], "type": t, "events": n}
            for (s, b, t), n in sorted(by_quarter.items())
        ],
    )
    if not members:
        return
    run(
        conn,
        sql[1],
        [
            {
                "store": s,
                "member": m,
                "bucket": starts[b],
                "visits": v,
                "joins": j,
                "last_visit": at_(last),
            }
            for (s, m, b), (v, j, last) in sorted(visits.items())
        ],
    )
    run(
        conn,
        sql[2],
        [
            {
                "store": s,
                "member": m,
                "first_seen": at_(a.first_seen),
                "first_visit": at_(a.first_visit),
                "last_visit": at_(a.last),
                "prev_visit": at_(a.prev),
                "visits": a.visits,
            }
            for (s, m), a in sorted(members.items())
        ],
    )


def _run_sqlite(conn: Connection, upsert: Any, rows: list[dict[str, Any]]) -> None:
    conn.exec_driver_sql(upsert, rows)


def _run_postgresql(conn: Connection, upsert: Any, rows: list[dict[str, Any]]) -> None:
    conn.execute(upsert, params(rows))


def _stamp(at: datetime | None) -> str | None:
    """A UTC time as SQLite holds it ('YYYY-MM-DD HH:MM:SS.ffffff', as `UTCDateTime`
    writes it), passed to the driver as is: a batch's thousands of rows skip
    SQLAlchemy's per-value conversion."""
    if at is None:
        return None
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    return at.isoformat(" ", "microseconds")[:26]  # without its '+00:00'


def _aware(at: datetime | None) -> datetime | None:
    return None if at is None else at.astimezone(UTC)


def _latest(dialect: str, *values: ColumnElement[Any]) -> ColumnElement[Any]:
    """The latest of `values`, NULLs ignored (NULL when all are)."""
    if dialect == "postgresql":
        return func.greatest(*values)
    # SQLite's max(a, b) is NULL when one is: each argument stands in for a missing one.
    return func.max(*(func.coalesce(v, *(w for w in values if w is not v)) for v in values))


def _earliest(dialect: str, *values: ColumnElement[Any]) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.least(*values)
    return func.min(*(func.coalesce(v, *(w for w in values if w is not v)) for v in values))


@cache
def _upserts(dialect: str) -> tuple[Any, Any, Any]:
    """The three upserts (built once): on SQLite the driver's SQL with named parameters,
    run for many rows; on PostgreSQL statements that take all the rows as one JSON text
    (`bulk.py`)."""

    def insert(table: Table) -> Any:
        if dialect == "sqlite":
            return sqlite.insert(table)
        return recordset_insert(table, tuple(c.name for c in table.c))

    counts_t: Any = EventCountRow.__table__
    up_counts = insert(counts_t)
    up_counts = up_counts.on_conflict_do_update(
        index_elements=["store", "bucket", "type"],
        set_={"events": counts_t.c.events + up_counts.excluded.events},
    )
    visits_t: Any = MemberVisitRow.__table__
    up_visits = insert(visits_t)
    new = up_visits.excluded
    up_visits = up_visits.on_conflict_do_update(
        index_elements=["store", "member", "bucket"],
        set_={
            "visits": visits_t.c.visits + new.visits,
            "joins": visits_t.c.joins + new.joins,
            "last_visit": _latest(dialect, visits_t.c.last_visit, new.last_visit),
        },
    )
    act: Any = MemberActivityRow.__table__
    up_act = insert(act)
    new = up_act.excluded
    # The last two visits of both: the latest is the later of the two lasts; the one
    # before it the latest of the earlier last and both previous ones.
    earlier_last = case(
        (or_(act.c.last_visit.is_(None), new.last_visit.is_(None)), None),
        else_=_earliest(dialect, act.c.last_visit, new.last_visit),
    )
    up_act = up_act.on_conflict_do_update(
        index_elements=["store", "member"],
        set_={
            "first_seen": _earliest(dialect, act.c.first_seen, new.first_seen),
            "first_visit": _earliest(dialect, act.c.first_visit, new.first_visit),
            "last_visit": _latest(dialect, act.c.last_visit, new.last_visit),
            "prev_visit": _latest(dialect, earlier_last, act.c.prev_visit, new.prev_visit),
            "visits": act.c.visits + new.visits,
        },
    )
    if dialect != "sqlite":
        return up_counts, up_visits, up_act
    target = sqlite.dialect(paramstyle="named")
    counts_sql, visits_sql, act_sql = (
        str(stmt.compile(dialect=target)) for stmt in (up_counts, up_visits, up_act)
    )
    return counts_sql, visits_sql, act_sql
