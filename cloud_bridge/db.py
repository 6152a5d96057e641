"""The bridge's database: every event exactly once, and the last status of each kiosk.

Works on SQLite (the embedded default, one shop) and PostgreSQL (a chain, several bridge
workers). Exactly-once storage does not depend on who else is writing: each insert is an
`INSERT … ON CONFLICT (id) DO NOTHING`, so a re-sent event, or the same event handled by
two workers at once, lands once and the loser simply learns it was already there.

Rows are inserted in id order, so two writers with overlapping batches take their row
locks in one order and cannot deadlock each other on PostgreSQL; a transaction the server
still aborts (deadlock, serialization failure, a locked SQLite file) is run again.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Engine,
    Index,
    String,
    Text,
    and_,
    create_engine,
    event,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from o2o_protocol.messages import Command, Event, EventType, Status
from o2o_protocol.timeutil import parse_rfc3339

log = logging.getLogger(__name__)

#: Rows per INSERT statement (well under SQLite's bound-parameter limit).
_CHUNK = 500
#: Attempts for a transaction the database aborted because of another writer.
_CONFLICT_ATTEMPTS = 5
#: SQLSTATEs of "run it again": serialization_failure, deadlock_detected.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})

T = TypeVar("T")


class UnstorableEvent(ValueError):
    """An event the bridge refuses on the database's behalf.

    PostgreSQL's `json` type accepts `\\u0000` but every later `->>` on that row fails
    (no NUL in `text`), which would break today's figures for good; SQLite would keep
    it. Refused up front, such an event is quarantined the same way on both.
    """


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def is_write_conflict(exc: BaseException) -> bool:
    """An abort caused by a concurrent writer, not by the data: the same work will succeed
    when run again (PostgreSQL deadlock or serialization failure, SQLite `locked`)."""
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(orig)


def is_connection_error(exc: BaseException) -> bool:
    """The database is unreachable or busy, not refusing this data: retrying is right.

    Everything else (a DataError, an IntegrityError, a value the driver cannot bind) is
    about the rows themselves and will fail again however often it is retried.
    """
    if isinstance(exc, DisconnectionError | PoolTimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, ConnectionError)


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


@dataclass(frozen=True)
class RejectedEvent:
    id: str
    store: str
    kiosk: str
    raw: str
    error: str
    received_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "store": self.store,
            "kiosk": self.kiosk,
            "raw": self.raw,
            "error": self.error,
            "received_at": format_ts(self.received_at),
        }


@dataclass(frozen=True)
class StoredEvent:
    id: str
    seq: int
    type: str
    ts: datetime
    store: str
    kiosk: str
    data: dict[str, Any]
    received_at: datetime

    def envelope(self) -> dict[str, Any]:
        """The event as the contract's envelope (DESIGN §4), ts in RFC 3339 UTC."""
        return {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "ts": format_ts(self.ts),
            "store": self.store,
            "kiosk": self.kiosk,
            "data": self.data,
        }


@dataclass(frozen=True)
class KioskState:
    store: str
    kiosk: str
    online: bool
    last_status: dict[str, Any]
    last_seen: datetime | None


def format_ts(dt: datetime) -> str:
    """RFC 3339 UTC with milliseconds (microseconds only when they carry information)."""
    dt = dt.astimezone(UTC)
    frac = (
        f"{dt.microsecond // 1000:03d}" if dt.microsecond % 1000 == 0 else f"{dt.microsecond:06d}"
    )
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"


def make_engine(url: str) -> Engine:
    """An engine set up for this workload: WAL and a busy timeout on SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def local_midnight(now: datetime | None = None) -> datetime:
    """Start of today in the machine's zone (the shop's day), as an aware datetime."""
    local = (now or datetime.now(UTC)).astimezone()
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


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

    def create_tables(self) -> None:
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: Any) -> Any:
        return (sqlite.insert if self._dialect == "sqlite" else postgresql.insert)(table)

    # -- events ---------------------------------------------------------------------

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
                log.info("write conflict (%s), retrying in %.2fs", _first_line(exc), pause)
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
            if e.id not in rows and _has_nul(e.data):
                raise UnstorableEvent(f"event {e.id}: data holds a NUL character (\\u0000)")
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
                },
            )
        if not rows:
            return []
        # One lock order for every writer: overlapping batches cannot deadlock.
        values = [rows[k] for k in sorted(rows)]
        new = self._retrying(lambda session: self._insert_events(session, values))
        return [i for i in rows if i in new]  # in the order they came

    def _insert_events(self, session: Session, values: list[dict[str, Any]]) -> set[str]:
        """INSERT … ON CONFLICT DO NOTHING; the ids that were new."""
        new: set[str] = set()
        # One cached statement run "executemany" style: SQLAlchemy batches the rows into
        # multi-row INSERTs itself (insertmanyvalues) without compiling SQL per batch.
        stmt = (
            self._insert(EventRow.__table__)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(EventRow.__table__.c.id)
        )
        for i in range(0, len(values), _CHUNK):
            result = session.connection().execute(stmt, values[i : i + _CHUNK])
            new.update(result.scalars())
        return new

    # -- quarantine -------------------------------------------------------------------

    def reject_event(self, event: Event, error: str, *, now: datetime | None = None) -> bool:
        """Quarantine an event the database refused; False if it already was."""
        raw = json.dumps(event.model_dump(), ensure_ascii=False, separators=(",", ":"))
        row = {
            "id": event.id,
            "store": event.store,
            "kiosk": event.kiosk,
            # json.dumps escapes control characters: the text holds no NUL a database
            # could refuse in turn.
            "raw": raw,
            "error": error.replace("\x00", "")[:2000],
            "received_at": now or datetime.now(UTC),
        }
        stmt = (
            self._insert(RejectedEventRow.__table__)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(RejectedEventRow.__table__.c.id)
        )
        return self._retrying(lambda session: session.execute(stmt).first() is not None)

    def rejected_events(
        self, *, store: str | None = None, since: datetime | None = None, limit: int | None = 100
    ) -> list[RejectedEvent]:
        """Quarantined events, newest first."""
        stmt = select(RejectedEventRow)
        if store is not None:
            stmt = stmt.where(RejectedEventRow.store == store)
        if since is not None:
            stmt = stmt.where(RejectedEventRow.received_at >= since)
        stmt = stmt.order_by(RejectedEventRow.received_at.desc(), RejectedEventRow.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._sessions() as session:
            return [
                RejectedEvent(r.id, r.store, r.kiosk, r.raw, r.error, r.received_at)
                for r in session.execute(stmt).scalars()
            ]

    # -- coupons ----------------------------------------------------------------------

    def redemptions(self, store: str, coupon_id: str) -> list[StoredEvent]:
        """The stored `coupon.redeemed` events of one coupon, in the order they arrived."""
        stmt = (
            select(EventRow)
            .where(
                EventRow.store == store,
                EventRow.type == EventType.COUPON_REDEEMED.value,
                EventRow.data["coupon_id"].as_string() == coupon_id,
            )
            .order_by(EventRow.received_at, EventRow.id)
        )
        with self._sessions() as session:
            return [_stored(r) for r in session.execute(stmt).scalars()]

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
        """Stored events, newest first by default (by ts, then id)."""
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
        """Stream events without loading the whole table (for exports)."""
        stmt = select(EventRow)
        if store is not None:
            stmt = stmt.where(EventRow.store == store)
        if since is not None:
            stmt = stmt.where(EventRow.ts >= since)
        if type is not None:
            stmt = stmt.where(EventRow.type == type)
        if kiosk is not None:
            stmt = stmt.where(EventRow.kiosk == kiosk)
        if oldest_first:
            stmt = stmt.order_by(EventRow.ts, EventRow.id)
        else:
            stmt = stmt.order_by(EventRow.ts.desc(), EventRow.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._sessions() as session:
            for row in session.execute(stmt.execution_options(yield_per=1000)).scalars():
                yield _stored(row)

    def count_events(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(EventRow)) or 0)

    def today_stats(self, store: str, *, now: datetime | None = None) -> dict[str, Any]:
        """Today's figures (the shop's local day) for the dashboard and the stats topic."""
        now = now or datetime.now(UTC)
        start = local_midnight(now)
        end = start + timedelta(days=1)
        in_today = (EventRow.store == store, EventRow.ts >= start, EventRow.ts < end)
        reason = EventRow.data["reason"].as_string()
        with self._sessions() as session:
            by_type = {
                t: int(n)
                for t, n in session.execute(
                    select(EventRow.type, func.count()).where(*in_today).group_by(EventRow.type)
                )
            }
            rejections = {
                (r or "unknown"): int(n)
                for r, n in session.execute(
                    select(reason, func.count())
                    .where(*in_today, EventRow.type == EventType.SCAN_REJECTED.value)
                    .group_by(reason)
                )
            }
            kiosks = session.execute(
                select(KioskRow.online).where(KioskRow.store == store)
            ).scalars()
            online = [bool(k) for k in kiosks]
            doubles = int(session.scalar(self._double_redemptions(store, start, end)) or 0)
        return {
            "store": store,
            "day": start.strftime("%Y-%m-%d"),
            "ts": format_ts(now),
            "events": sum(by_type.values()),
            "checkins": by_type.get(EventType.CHECKIN.value, 0),
            "redemptions": by_type.get(EventType.COUPON_REDEEMED.value, 0),
            "pickups": by_type.get(EventType.PICKUP_COMPLETED.value, 0),
            "reservations": by_type.get(EventType.RESERVATION_ARRIVED.value, 0),
            "joins": by_type.get(EventType.MEMBER_JOINED.value, 0),
            "rejected": by_type.get(EventType.SCAN_REJECTED.value, 0),
            "double_redemptions": doubles,
            "rejections": dict(sorted(rejections.items())),
            "by_type": dict(sorted(by_type.items())),
            "kiosks_online": sum(online),
            "kiosks_seen": len(online),
        }

    @staticmethod
    def _double_redemptions(store: str, start: datetime, end: datetime) -> Any:
        """Today's redemptions of a coupon the bridge had already stored as redeemed
        (under another event id): two kiosks that were offline at once both accepted it."""
        first = aliased(EventRow)
        coupon = EventRow.data["coupon_id"].as_string()
        redeemed = EventType.COUPON_REDEEMED.value
        earlier = exists().where(
            first.store == EventRow.store,
            first.type == redeemed,
            first.data["coupon_id"].as_string() == coupon,
            first.id != EventRow.id,
            or_(
                first.received_at < EventRow.received_at,
                and_(first.received_at == EventRow.received_at, first.id < EventRow.id),
            ),
        )
        return (
            select(func.count())
            .select_from(EventRow)
            .where(
                EventRow.store == store,
                EventRow.type == redeemed,
                EventRow.ts >= start,
                EventRow.ts < end,
                coupon.is_not(None),
                earlier,
            )
        )

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
        for attempt in range(5):
            try:
                with self._sessions.begin() as session:
                    last = session.scalar(
                        select(func.max(CommandRow.seq)).where(
                            CommandRow.store == store, CommandRow.kiosk == kiosk
                        )
                    )
                    cmd = Command(seq=int(last or 0) + 1, name=name, data=data)
                    session.add(
                        CommandRow(
                            store=store,
                            kiosk=kiosk,
                            seq=cmd.seq,
                            name=name,
                            data=data,
                            created_at=datetime.now(UTC),
                        )
                    )
                return cmd
            except (IntegrityError, OperationalError):
                # Another writer took this seq (or held the SQLite lock): count again.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

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


def _stored(row: EventRow) -> StoredEvent:
    return StoredEvent(
        id=row.id,
        seq=row.seq,
        type=row.type,
        ts=row.ts,
        store=row.store,
        kiosk=row.kiosk,
        data=row.data,
        received_at=row.received_at,
    )


def _first_line(exc: BaseException) -> str:
    """The driver's own message, first line (no SQL, no parameters)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    return text.splitlines()[0] if text else type(orig).__name__
