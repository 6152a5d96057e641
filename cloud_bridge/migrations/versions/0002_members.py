"""Members and their points ledger, the reward catalogue, pre-signed code pools.

The members of a 0.1 shop are carried over from its stored events: each counted check-in
becomes a ledger entry (ref `event:<id>`, so a kiosk re-sending it later does not count it
again), and a `member.joined` makes the member. Self-contained on purpose (plain table
constructs, no app code), so it does the same whatever later releases change.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_MEMBER = 256


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "members",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(_MEMBER), primary_key=True),
        sa.Column("name", sa.String(100), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("visits", sa.Integer(), nullable=False),
        sa.Column("last_visit", _ts(), nullable=True),
        sa.Column("joined_at", _ts(), nullable=False),
        sa.Column("source", sa.String(80), nullable=False),
        sa.Column("referrer", sa.String(_MEMBER), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("store", sa.String(64), nullable=False),
        sa.Column("member", sa.String(_MEMBER), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("source", sa.String(80), nullable=False),
        sa.Column("ref", sa.String(300), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("overdraft", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", _ts(), nullable=False),
        sa.UniqueConstraint("store", "ref", name="uq_ledger_entries_store_ref"),
    )
    op.create_index("ix_ledger_entries_store_member", "ledger_entries", ["store", "member", "id"])
    op.create_table(
        "rewards",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("name_en", sa.String(100), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("stock", sa.BigInteger(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
    )
    op.create_table(
        "pool_codes",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(_MEMBER), primary_key=True),
        sa.Column("kiosk", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reward", sa.String(64), nullable=True),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("issued_at", _ts(), nullable=False),
        sa.Column("used_at", _ts(), nullable=True),
        sa.Column("used_event", sa.String(64), nullable=True),
    )
    op.create_index("ix_pool_codes_kiosk", "pool_codes", ["store", "kiosk", "kind", "reward"])
    _backfill(op.get_bind())


#: Events read per query (keyset pages: no cursor stays open while rows are written).
_PAGE = 1000
_NAME = 100

_events = sa.table(
    "events",
    sa.column("id", sa.String()),
    sa.column("store", sa.String()),
    sa.column("kiosk", sa.String()),
    sa.column("type", sa.String()),
    sa.column("ts", sa.DateTime(timezone=True)),
    sa.column("data", sa.JSON()),
    sa.column("received_at", sa.DateTime(timezone=True)),
)
#: An event dated more than this after it arrived (a kiosk clock far ahead) happened when
#: it arrived: a visit in the year 2999 would hold the cool-down at every door for good.
_SKEW = timedelta(days=1)
_members = sa.table(
    "members",
    *(sa.column(c) for c in ("store", "id", "name", "points", "visits", "last_visit", "joined_at")),
    *(sa.column(c) for c in ("source", "referrer", "updated_at")),
)
_ledger = sa.table(
    "ledger_entries",
    *(
        sa.column(c)
        for c in ("store", "member", "delta", "reason", "source", "ref", "at", "overdraft")
    ),
    sa.column("recorded_at"),
)


class _Member:
    """A member as the events so far tell it (a plain class: Alembic loads this module
    outside `sys.modules`, where a dataclass cannot resolve its annotations)."""

    def __init__(self, joined_at: datetime, source: str) -> None:
        self.joined_at = joined_at
        self.source = source
        self.name: str | None = None
        self.named_at: datetime | None = None
        self.points = 0
        self.visits = 0
        self.last_visit: datetime | None = None


def _member_id(value: Any) -> str | None:
    if not isinstance(value, str) or not 1 <= len(value) <= _MEMBER:
        return None
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return None
    return value


def _earned(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        return 0
    return value


def _backfill(conn: sa.Connection) -> None:
    """Members and ledger entries from the events already stored, read a page at a time."""
    now = datetime.now(UTC)
    if conn.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # how the bridge stores times there (naive UTC)
    members: dict[tuple[str, str], _Member] = {}
    last = ""
    while True:
        page = conn.execute(
            sa.select(_events)
            .where(_events.c.type.in_(("checkin", "member.joined")), _events.c.id > last)
            .order_by(_events.c.id)
            .limit(_PAGE)
        ).all()
        if not page:
            break
        last = page[-1].id
        entries = []
        for e in page:
            data = e.data if isinstance(e.data, dict) else {}
            member_id = _member_id(data.get("member_id"))
            if member_id is None or (e.type != "checkin" and data.get("known") is True):
                continue  # a join of a phone that had joined before: no new member
            source = f"kiosk:{e.kiosk}"
            at = e.received_at if e.ts > e.received_at + _SKEW else e.ts
            m = members.get((e.store, member_id))
            if m is None:
                m = members[(e.store, member_id)] = _Member(at, source)
            elif at < m.joined_at:
                m.joined_at, m.source = at, source
            if e.type != "checkin":
                continue
            name = data.get("name")
            if isinstance(name, str) and name and (m.named_at is None or at >= m.named_at):
                m.name, m.named_at = name[:_NAME], at
            earned = _earned(data.get("points_earned"))
            counted = data.get("counted")
            if counted is not True and not (counted is None and earned > 0):
                continue
            m.points += earned
            m.visits += 1
            m.last_visit = at if m.last_visit is None else max(m.last_visit, at)
            entries.append(
                {
                    "store": e.store,
                    "member": member_id,
                    "delta": earned,
                    "reason": "checkin",
                    "source": source,
                    "ref": f"event:{e.id}",
                    "at": at,
                    "overdraft": False,
                    "recorded_at": now,
                }
            )
        if entries:
            conn.execute(_ledger.insert(), entries)
    rows = [
        {
            "store": store,
            "id": member_id,
            "name": m.name,
            "points": m.points,
            "visits": m.visits,
            "last_visit": m.last_visit,
            "joined_at": m.joined_at,
            "source": m.source,
            "referrer": None,
            "updated_at": now,
        }
        for (store, member_id), m in members.items()
    ]
    for i in range(0, len(rows), _PAGE):
        conn.execute(_members.insert(), rows[i : i + _PAGE])


def downgrade() -> None:
    for table in ("pool_codes", "rewards", "ledger_entries", "members"):
        op.drop_table(table)
