"""The bridge's database: every event exactly once, and the last status of each kiosk.

Works on SQLite (the embedded default, one shop) and PostgreSQL (a chain, several bridge
workers). Exactly-once storage does not depend on who else is writing: each insert is an
`INSERT … ON CONFLICT (id) DO NOTHING`, so a re-sent event, or the same event handled by
two workers at once, lands once and the loser simply learns it was already there.

Rows are inserted in id order, so two writers with overlapping batches take their row
locks in one order and cannot deadlock each other on PostgreSQL; a transaction the server
still aborts (deadlock, serialization failure, a locked SQLite file) is run again.

Longer than most modules, on purpose: every read and write of the bridge's tables goes
through one session factory and one retry policy here; the figures are in `figures.py`,
the row types in `tables.py` and `records.py`, error kinds in `errors.py`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    Table,
    create_engine,
    event,
    func,
    not_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from cloud_bridge.db import rollup
from cloud_bridge.db.bulk import params, recordset_insert
from cloud_bridge.db.errors import (
    UnstorableEvent,
    is_write_conflict,
    json_preview,
    one_line,
    safe_text,
    text_problem,
)
from cloud_bridge.db.figures import ahead
from cloud_bridge.db.figures import today_stats as figures_of_today
from cloud_bridge.db.migrate import migrate
from cloud_bridge.db.records import (
    KioskState,
    RejectedEvent,
    StoredEvent,
    plus_skew,
    stored_event,
)
from cloud_bridge.db.tables import CommandRow, EventRow, KioskRow, RejectedEventRow, coupon_of
from o2o_protocol.messages import Command, Event, EventType, Status
from o2o_protocol.timeutil import parse_rfc3339

log = logging.getLogger(__name__)

#: Rows per INSERT statement (well under SQLite's bound-parameter limit).
_CHUNK = 500
#: Characters of a quarantined event's text kept (`raw`); a longer one is cut.
RAW_CHARS = 8192
#: Attempts for a transaction the database aborted because of another writer.
_CONFLICT_ATTEMPTS = 5

T = TypeVar("T")
_R = TypeVar("_R")


def _chunked(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), _CHUNK):
        yield rows[i : i + _CHUNK]


def make_engine(url: str) -> Engine:
    """An engine set up for this workload: WAL and a busy timeout on SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = Path(parsed.database) if parsed.database else None
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            _private(db, create=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            if db is not None:
                # SQLite gives -wal and -shm the database file's mode; older ones (made
                # when it was 0644) are made private here.
                for side in (Path(f"{db}-wal"), Path(f"{db}-shm")):
                    _private(side)

        return engine
    return create_engine(url, pool_pre_ping=True)


def _private(path: Path, *, create: bool = False) -> None:
    """Mode 0600: the bridge's database holds member names and phone hashes, like the
    kiosk's journal. Created so (never readable by others, not even for a moment), or
    made so when an earlier version left it 0644."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot make %s private (chmod 600): %s", path, exc.strerror)


class Repository:
    """All the bridge's reads and writes; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._dialect = engine.dialect.name
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {self._dialect!r}")

    @classmethod
    def from_url(cls, url: str) -> Repository:
        return cls(make_engine(url))

    def migrate(self) -> None:
        """Create the tables, or upgrade them to this release's (Alembic, `migrate.py`)."""
        migrate(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: Any) -> Any:
        return (sqlite.insert if self._dialect == "sqlite" else postgresql.insert)(table)

    def insert_many(
        self,
        session: Session,
        table: Any,
        rows: Sequence[dict[str, Any]],
        *,
        skip_on: Sequence[str] = (),
        returning: Sequence[Any] = (),
    ) -> Sequence[Any]:
        """INSERT many rows (each with the same keys) in the caller's transaction; with
        `skip_on`, rows that conflict on those columns are left out (ON CONFLICT DO
        NOTHING). The `returning` columns of the rows inserted. On PostgreSQL all rows go
        as one JSON text (`bulk.py`); on SQLite, SQLAlchemy's multi-row form."""
        if not rows:
            return []
        table = cast(Table, getattr(table, "__table__", table))
        if self._dialect == "postgresql":
            stmt: Any = recordset_insert(table, tuple(rows[0]))
            params_: Any = params(rows)
        else:
            stmt, params_ = sqlite.insert(table), list(rows)
        if skip_on:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(skip_on))
        if not returning:
            session.execute(stmt, params_)
            return []
        out: list[Any] = []
        chunks = [params_] if self._dialect == "postgresql" else _chunked(params_)
        for chunk in chunks:
            out.extend(session.execute(stmt.returning(*returning), chunk).all())
        return out

    # -- events ---------------------------------------------------------------------

    def read(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a session of its own, for reads (nothing committed)."""
        with self._sessions() as session:
            return work(session)

    def _retrying(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a transaction; again (a few times, jittered) if a concurrent
        writer made the database abort it."""
        for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
            try:
                with self._sessions.begin() as session:
                    return work(session)
            except DBAPIError as exc:
                if attempt == _CONFLICT_ATTEMPTS or not is_write_conflict(exc):
                    raise
                pause = random.uniform(0.01, 0.05) * 2**attempt
                log.info("write conflict (%s), retrying in %.2fs", one_line(exc), pause)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def add_events(self, events: Sequence[Event], *, now: datetime | None = None) -> list[str]:
        """Store events in one transaction; returns the ids that were new.

        Ids already stored (a re-send, or another worker that got there first) are
        skipped by the database itself, so each id is stored once whatever the timing.
        """
        received = now or datetime.now(UTC)
        rows: dict[str, dict[str, Any]] = {}
        for e in events:
            problem = None if e.id in rows else text_problem(e.data)
            if problem:
                raise UnstorableEvent(f"event {e.id}: data holds {problem}")
            rows.setdefault(
                e.id,
                {
                    "id": e.id,
                    "store": e.store,
                    "kiosk": e.kiosk,
                    "seq": e.seq,
                    "type": e.type,
                    "ts": parse_rfc3339(e.ts),
                    "data": e.data,
                    "received_at": received,
                    "coupon_id": coupon_of(e.type, e.data),
                },
            )
        if not rows:
            return []
        # One lock order for every writer: overlapping batches cannot deadlock.
        values = [rows[k] for k in sorted(rows)]
        new = self._retrying(lambda session: self._insert_events(session, values))
        return [i for i in rows if i in new]  # in the order they came

    def _insert_events(self, session: Session, values: list[dict[str, Any]]) -> set[str]:
        """INSERT … ON CONFLICT DO NOTHING; the ids that were new, added to the insights'
        roll-ups in the same transaction (`rollup.py`: a re-sent event counts once)."""
        table = cast(Table, EventRow.__table__)
        inserted = self.insert_many(session, table, values, skip_on=["id"], returning=[table.c.id])
        new = {str(row.id) for row in inserted}
        rollup.add(session.connection(), [v for v in values if v["id"] in new])
        return new

    # -- quarantine -------------------------------------------------------------------

    def reject_event(self, event: Event, error: str, *, now: datetime | None = None) -> bool:
        """Quarantine an event the database refused; False if it already was."""
        raw = json_preview(event.model_dump(), RAW_CHARS)
        return self.reject(event.id, event.store, event.kiosk, raw, error, now=now)

    def reject(
        self,
        id: str,
        store: str,
        kiosk: str,
        raw: str,
        error: str,
        *,
        now: datetime | None = None,
    ) -> bool:
        """Quarantine what can never be stored (`raw`: its text, bounded by the caller);
        False if that id already was."""
        row = {
            "id": id,
            "store": store,
            "kiosk": kiosk,
            # No NUL, no lone surrogate: text every database keeps.
            "raw": safe_text(raw, RAW_CHARS + 100),
            "error": safe_text(error, 2000),
            "received_at": now or datetime.now(UTC),
        }
        stmt = (
            self._insert(RejectedEventRow.__table__)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(RejectedEventRow.__table__.c.id)
        )
        return self._retrying(lambda session: session.execute(stmt).first() is not None)

    def check_writable(self, store: str, kiosk: str) -> None:
        """Raise unless the database takes an ordinary event now (inserted, rolled back).

        Tells "this event can never be stored" (the stand-in goes in) apart from "the
        database is down or broken" (it does not, and the error says why).
        """
        now = datetime.now(UTC)
        row = {
            "id": f"probe-{uuid.uuid4().hex}",
            "store": store,
            "kiosk": kiosk,
            "seq": 1,
            "type": "probe",
            "ts": now,
            "data": {},
            "received_at": now,
        }
        with self.engine.connect() as conn:
            trans = conn.begin()
            try:
                conn.execute(self._insert(EventRow.__table__), [row])
            finally:
                trans.rollback()

    def count_rejected(self, store: str | None = None) -> int:
        stmt = select(func.count()).select_from(RejectedEventRow)
        if store is not None:
            stmt = stmt.where(RejectedEventRow.store == store)
        with self._sessions() as session:
            return int(session.scalar(stmt) or 0)

    def rejected_events(
        self, *, store: str | None = None, since: datetime | None = None, limit: int | None = 100
    ) -> list[RejectedEvent]:
        """Quarantined events, newest first."""
        stmt = _where(
            select(RejectedEventRow),
            None if store is None else RejectedEventRow.store == store,
            None if since is None else RejectedEventRow.received_at >= since,
        ).order_by(RejectedEventRow.received_at.desc(), RejectedEventRow.id.desc())
        stmt = stmt.limit(limit)
        with self._sessions() as session:
            return [
                RejectedEvent(r.id, r.store, r.kiosk, r.raw, r.error, r.received_at)
                for r in session.execute(stmt).scalars()
            ]

    # -- coupons ----------------------------------------------------------------------

    def redemptions(self, store: str, coupon_id: str) -> list[StoredEvent]:
        """The stored `coupon.redeemed` events of one coupon, in the order they arrived."""
        return self.redemptions_of(store, [coupon_id]).get(coupon_id, [])

    def redemptions_of(self, store: str, coupon_ids: Sequence[str]) -> dict[str, list[StoredEvent]]:
        """`redemptions` for many coupons in one read (a batch's worth): each coupon's
        stored redemptions in the order they arrived; a coupon with none is left out, as
        is one whose id is too long to pass on (`tables.coupon_of`)."""
        found: dict[str, list[StoredEvent]] = {}
        ids = sorted(set(coupon_ids))
        with self._sessions() as session:
            for start in range(0, len(ids), 500):  # a bounded IN list
                stmt = (
                    select(*EventRow.__table__.c)  # plain rows: no ORM object per event
                    .where(
                        EventRow.store == store,
                        EventRow.type == EventType.COUPON_REDEEMED.value,
                        EventRow.coupon_id.in_(ids[start : start + 500]),  # an index range
                    )
                    .order_by(EventRow.received_at, EventRow.id)
                )
                for r in session.execute(stmt).all():
                    found.setdefault(r.coupon_id, []).append(stored_event(r))
        return found

    def events(
        self,
        *,
        store: str | None = None,
        since: datetime | None = None,
        type: str | None = None,
        kiosk: str | None = None,
        limit: int | None = 100,
        oldest_first: bool = False,
    ) -> list[StoredEvent]:
        """Stored events, newest first by default (by when they happened, then id; see
        `iter_events`)."""
        return list(
            self.iter_events(
                store=store,
                since=since,
                type=type,
                kiosk=kiosk,
                limit=limit,
                oldest_first=oldest_first,
            )
        )

    def iter_events(
        self,
        *,
        store: str | None = None,
        since: datetime | None = None,
        type: str | None = None,
        kiosk: str | None = None,
        limit: int | None = None,
        oldest_first: bool = True,
    ) -> Iterator[StoredEvent]:
        """Stream events without loading the whole table (for exports).

        In the order they happened (`StoredEvent.when`): by `ts`, except that an event
        dated more than a day after it was received (a kiosk clock in 2999) takes its
        place by `received_at`, so it is never on top for good. Two index-friendly
        queries, merged: the events dated plausibly (by `ts`), and those dated ahead."""
        filters = (
            None if store is None else EventRow.store == store,
            None if type is None else EventRow.type == type,
            None if kiosk is None else EventRow.kiosk == kiosk,
        )
        early = ahead(self._dialect)
        plain = _where(
            select(EventRow), *filters, not_(early), None if since is None else EventRow.ts >= since
        )
        if oldest_first:
            plain = plain.order_by(EventRow.ts, EventRow.id)
        else:
            plain = plain.order_by(EventRow.ts.desc(), EventRow.id.desc())
        with self._sessions() as session:
            rows: Iterator[StoredEvent] = (
                stored_event(r)
                for r in session.execute(
                    plain.limit(limit).execution_options(yield_per=1000)
                ).scalars()
            )
            floor = since
            if limit is not None:
                first = list(rows)
                rows = iter(first)
                if not oldest_first and len(first) == limit:
                    # Only one received after the last of these can still make the list.
                    floor = max(floor, first[-1].ts) if floor else first[-1].ts
            dated_ahead = _where(
                select(EventRow),
                *filters,
                early,
                None if floor is None else EventRow.received_at >= floor,
                # Index range: dated ahead of its receipt means dated after `floor + 1d`.
                None if floor is None else EventRow.ts > plus_skew(floor),
            )
            if oldest_first:
                dated_ahead = dated_ahead.order_by(EventRow.received_at, EventRow.id)
            else:
                dated_ahead = dated_ahead.order_by(EventRow.received_at.desc(), EventRow.id.desc())
            others = [stored_event(r) for r in session.execute(dated_ahead.limit(limit)).scalars()]
            merged = heapq.merge(
                rows, others, key=lambda e: (e.when, e.id), reverse=not oldest_first
            )
            yield from itertools.islice(merged, limit)

    def count_events(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(EventRow)) or 0)

    def today_stats(
        self, store: str, *, now: datetime | None = None, zone: tzinfo | None = None
    ) -> dict[str, Any]:
        """Today's figures (the shop's day in `zone`) for the dashboard and the stats topic."""
        with self._sessions() as session:
            return figures_of_today(session, store, now=now, zone=zone)

    # -- kiosks ---------------------------------------------------------------------

    def set_status(
        self, store: str, kiosk: str, status: Status, *, seen: datetime | None = None
    ) -> None:
        """Record a kiosk's latest status. `seen=None` keeps the previous last_seen."""
        doc = json.loads(status.model_dump_json(exclude_none=True))
        values: dict[str, Any] = {
            "store": store,
            "kiosk": kiosk,
            "online": status.online,
            "last_status": doc,
            "last_seen": seen,
        }
        update: dict[str, Any] = {"online": status.online, "last_status": doc}
        if seen is not None:
            update["last_seen"] = seen
        stmt = (
            self._insert(KioskRow)
            .values(**values)
            .on_conflict_do_update(index_elements=["store", "kiosk"], set_=update)
        )
        with self._sessions.begin() as session:
            session.execute(stmt)

    def kiosk_names(self, store: str) -> list[str]:
        """Every kiosk of the store the bridge has heard from."""
        stmt = select(KioskRow.kiosk).where(KioskRow.store == store).order_by(KioskRow.kiosk)
        with self._sessions() as session:
            return list(session.execute(stmt).scalars())

    def kiosks(self, store: str | None = None) -> list[KioskState]:
        stmt = select(KioskRow).order_by(KioskRow.store, KioskRow.kiosk)
        if store is not None:
            stmt = stmt.where(KioskRow.store == store)
        with self._sessions() as session:
            return [
                KioskState(r.store, r.kiosk, r.online, r.last_status, r.last_seen)
                for r in session.execute(stmt).scalars()
            ]

    # -- commands ---------------------------------------------------------------------

    def add_command(self, store: str, kiosk: str, name: str, data: dict[str, Any]) -> Command:
        """Queue a command with the kiosk's next seq (gapless: the kiosk applies in order)."""
        return self.add_commands(store, [(kiosk, name, data)])[0]

    def add_commands(
        self, store: str, items: Sequence[tuple[str, str, dict[str, Any]]]
    ) -> list[Command]:
        """Queue many commands, `(kiosk, name, data)` each, in one transaction: each
        kiosk's go on from its last seq in the order given; the queued commands in that
        order. On PostgreSQL each kiosk's queue is locked (in kiosk order) for the
        transaction, so workers queueing for the same doors take turns instead of
        colliding on a seq; SQLite has one writer at a time anyway."""
        if not items:
            return []
        return self._retrying(lambda session: self.queue_commands(session, store, items))

    def queue_commands(
        self, session: Session, store: str, items: Sequence[tuple[str, str, dict[str, Any]]]
    ) -> list[Command]:
        """`add_commands` within a transaction of the caller's (one that queues a command
        with other changes, such as a code pool's refill)."""
        kiosks = sorted({kiosk for kiosk, _, _ in items})
        if self._dialect == "postgresql":
            for kiosk in kiosks:
                key = func.hashtextextended(f"cmd:{store}/{kiosk}", 0)
                session.execute(select(func.pg_advisory_xact_lock(key)))
        else:
            # pysqlite opens the transaction at the first write: this no-op one takes the
            # write lock now, so the last seq read below is still the last at the insert.
            session.execute(
                update(CommandRow)
                .where(CommandRow.store == store, CommandRow.kiosk == "", CommandRow.seq == -1)
                .values(name=CommandRow.name)
            )
        last = dict(
            session.execute(
                select(CommandRow.kiosk, func.max(CommandRow.seq))
                .where(CommandRow.store == store, CommandRow.kiosk.in_(kiosks))
                .group_by(CommandRow.kiosk)
            ).all()
        )
        now = datetime.now(UTC)
        queued: list[Command] = []
        rows: list[dict[str, Any]] = []
        for kiosk, name, data in items:
            seq = int(last.get(kiosk) or 0) + 1
            last[kiosk] = seq
            queued.append(Command(seq=seq, name=name, data=data))
            rows.append(
                {"store": store, "kiosk": kiosk, "seq": seq, "name": name,
                 "data": data, "created_at": now}
            )  # fmt: skip
        self.insert_many(session, CommandRow, rows)
        return queued

    def commands_after(self, store: str, kiosk: str, seq: int) -> list[Command]:
        """The commands a kiosk that has applied up to `seq` still needs, in order."""
        stmt = (
            select(CommandRow)
            .where(CommandRow.store == store, CommandRow.kiosk == kiosk, CommandRow.seq > seq)
            .order_by(CommandRow.seq)
        )
        with self._sessions() as session:
            return [
                Command(seq=r.seq, name=r.name, data=r.data)
                for r in session.execute(stmt).scalars()
            ]


def _where(stmt: Select[_R], *conditions: ColumnElement[bool] | None) -> Select[_R]:
    """`stmt` narrowed by each condition asked for (None: that filter was not given)."""
    return stmt.where(*(c for c in conditions if c is not None))
