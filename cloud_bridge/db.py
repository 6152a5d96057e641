"""The bridge's database: every event exactly once, and the last status of each kiosk.

Works on SQLite (the embedded default, one shop) and PostgreSQL (a chain, several bridge
workers). Exactly-once storage does not depend on who else is writing: each insert is an
`INSERT … ON CONFLICT (id) DO NOTHING`, so a re-sent event, or the same event handled by
two workers at once, lands once and the loser simply learns it was already there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Engine,
    Index,
    String,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from o2o_protocol.messages import Command, Event, EventType, Status
from o2o_protocol.timeutil import parse_rfc3339

log = logging.getLogger(__name__)

#: Rows per INSERT statement (well under SQLite's bound-parameter limit).
_CHUNK = 500


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

    def add_events(self, events: Sequence[Event], *, now: datetime | None = None) -> list[str]:
        """Store events in one transaction; returns the ids that were new.

        Ids already stored (a re-send, or another worker that got there first) are
        skipped by the database itself, so each id is stored once whatever the timing.
        """
        received = now or datetime.now(UTC)
        rows: dict[str, dict[str, Any]] = {}
        for e in events:
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
        values = list(rows.values())
        new: set[str] = set()
        # One cached statement run "executemany" style: SQLAlchemy batches the rows into
        # multi-row INSERTs itself (insertmanyvalues) without compiling SQL per batch.
        stmt = (
            self._insert(EventRow.__table__)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(EventRow.__table__.c.id)
        )
        with self._sessions.begin() as session:
            for i in range(0, len(values), _CHUNK):
                result = session.connection().execute(stmt, values[i : i + _CHUNK])
                new.update(result.scalars())
        return [r["id"] for r in values if r["id"] in new]

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
                yield StoredEvent(
                    id=row.id,
                    seq=row.seq,
                    type=row.type,
                    ts=row.ts,
                    store=row.store,
                    kiosk=row.kiosk,
                    data=row.data,
                    received_at=row.received_at,
                )

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
            "rejections": dict(sorted(rejections.items())),
            "by_type": dict(sorted(by_type.items())),
            "kiosks_online": sum(online),
            "kiosks_seen": len(online),
        }

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
