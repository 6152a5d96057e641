"""Members and their points ledger, the reward catalogue, pre-signed code pools.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

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


def downgrade() -> None:
    for table in ("pool_codes", "rewards", "ledger_entries", "members"):
        op.drop_table(table)
