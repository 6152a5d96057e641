"""The insights' roll-ups: event counts per UTC quarter-hour, members' visits.

Filled from the events already stored, one `INSERT … SELECT` per table, with the rules
the bridge keeps them by from now on (cloud_bridge/db/rollup.py): an event counts at its
`ts`, or at `received_at` when dated more than a day after it; a check-in only when it
counted (`data.counted` true or absent); a member is a `member_id` of text, at most 256
characters. On SQLite the tables keep their rows in key order (WITHOUT ROWID): a range
of them is read in one pass. Self-contained on purpose (plain SQL, no app code).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_MEMBER = 256
_TYPES = (
    "('checkin', 'coupon.redeemed', 'reservation.arrived', 'pickup.completed', 'member.joined')"
)


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


#: Per dialect: when an event counts, whether a check-in counted, its member (NULL when
#: not text of at most 256 characters), and the UTC quarter-hour of `w`.
_SQLITE = {
    # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): text order is time order.
    "when": "CASE WHEN ts > datetime(received_at, '+1 day') THEN received_at ELSE ts END",
    "counted": "(json_type(data, '$.counted') IS NULL OR json_type(data, '$.counted') = 'true')",
    "member": (
        "CASE WHEN json_type(data, '$.member_id') = 'text' "
        f"AND length(json_extract(data, '$.member_id')) <= {_MEMBER} "
        "THEN json_extract(data, '$.member_id') END"
    ),
    "quarter": (
        "substr(w, 1, 14) || printf('%02d', CAST(substr(w, 15, 2) AS INTEGER) / 15 * 15) "
        "|| '\\:00.000000'"  # \: is a colon to text(), not a parameter
    ),
}
_POSTGRESQL = {
    "when": "CASE WHEN ts > received_at + interval '1 day' THEN received_at ELSE ts END",
    "counted": "(data -> 'counted' IS NULL OR data ->> 'counted' = 'true')",
    "member": (
        "CASE WHEN json_typeof(data -> 'member_id') = 'string' "
        f"AND char_length(data ->> 'member_id') <= {_MEMBER} "
        "THEN data ->> 'member_id' END"
    ),
    "quarter": "to_timestamp(floor(extract(epoch FROM w) / 900) * 900)",
}


def upgrade() -> None:
    op.create_table(
        "event_counts",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("bucket", _ts(), primary_key=True),
        sa.Column("type", sa.String(64), primary_key=True),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "member_visits",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("member", sa.String(_MEMBER), primary_key=True),
        sa.Column("bucket", _ts(), primary_key=True),
        sa.Column("visits", sa.Integer(), nullable=False),
        sa.Column("joins", sa.Integer(), nullable=False),
        sa.Column("last_visit", _ts(), nullable=True),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "member_activity",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("member", sa.String(_MEMBER), primary_key=True),
        sa.Column("first_seen", _ts(), nullable=False),
        sa.Column("first_visit", _ts(), nullable=True),
        sa.Column("last_visit", _ts(), nullable=True),
        sa.Column("prev_visit", _ts(), nullable=True),
        sa.Column("visits", sa.Integer(), nullable=False),
        sqlite_with_rowid=False,
    )
    sql = _SQLITE if op.get_bind().dialect.name == "sqlite" else _POSTGRESQL
    # The events that count, with when and who; `w` is the time they count at.
    counted = (
        f"SELECT store, type, {sql['member']} AS member, {sql['when']} AS w FROM events "
        f"WHERE type IN {_TYPES} AND (type <> 'checkin' OR {sql['counted']})"
    )
    op.execute(
        "INSERT INTO event_counts (store, bucket, type, events) "
        f"SELECT store, {sql['quarter']} AS q, type, count(*) FROM ({counted}) AS e "
        "GROUP BY store, q, type"
    )
    people = (
        f"SELECT * FROM ({counted}) AS e "
        "WHERE member IS NOT NULL AND type IN ('checkin', 'member.joined')"
    )
    op.execute(
        "INSERT INTO member_visits (store, member, bucket, visits, joins, last_visit) "
        f"SELECT store, member, {sql['quarter']} AS q, "
        "sum(CASE WHEN type = 'checkin' THEN 1 ELSE 0 END), "
        "sum(CASE WHEN type = 'member.joined' THEN 1 ELSE 0 END), "
        "max(CASE WHEN type = 'checkin' THEN w END) "
        f"FROM ({people}) AS p GROUP BY store, member, q"
    )
    # The visit before the last: the second check-in counting back (a window function).
    ranked = (
        "SELECT store, member, type, w, CASE WHEN type = 'checkin' THEN row_number() OVER "
        f"(PARTITION BY store, member, type ORDER BY w DESC) END AS back FROM ({people}) AS p"
    )
    op.execute(
        "INSERT INTO member_activity "
        "(store, member, first_seen, first_visit, last_visit, prev_visit, visits) "
        "SELECT store, member, min(w), "
        "min(CASE WHEN type = 'checkin' THEN w END), "
        "max(CASE WHEN type = 'checkin' THEN w END), "
        "max(CASE WHEN back = 2 THEN w END), "
        "sum(CASE WHEN type = 'checkin' THEN 1 ELSE 0 END) "
        f"FROM ({ranked}) AS r GROUP BY store, member"
    )


def downgrade() -> None:
    for table in ("member_activity", "member_visits", "event_counts"):
        op.drop_table(table)
