"""The schema of release 0.1: events, kiosks, commands, quarantined events.

Databases made by 0.1 (which created its tables without Alembic) are stamped with this
revision the first time a newer bridge opens them, then upgraded from here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("store", sa.String(64), nullable=False),
        sa.Column("kiosk", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("ts", _ts(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
    )
    op.create_index("ix_events_store_ts", "events", ["store", "ts"])
    op.create_index("ix_events_type", "events", ["type"])
    op.create_table(
        "kiosks",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("kiosk", sa.String(64), primary_key=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("last_status", sa.JSON(), nullable=False),
        sa.Column("last_seen", _ts(), nullable=True),
    )
    op.create_table(
        "commands",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("kiosk", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
    )
    op.create_table(
        "rejected_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("store", sa.String(64), nullable=False),
        sa.Column("kiosk", sa.String(64), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("received_at", _ts(), nullable=False),
    )
    op.create_index(
        "ix_rejected_events_store_received", "rejected_events", ["store", "received_at"]
    )


def downgrade() -> None:
    for table in ("rejected_events", "commands", "kiosks", "events"):
        op.drop_table(table)
