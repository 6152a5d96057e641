"""Campaigns and the codes issued for them, activities and their sign-ups.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = 256


def _ts() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(100), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=True),
        sa.Column("issued", sa.BigInteger(), nullable=False),
        sa.Column("per_member", sa.Integer(), nullable=True),
        sa.Column("uses", sa.Integer(), nullable=True),
        sa.Column("hours", sa.JSON(), nullable=True),
        sa.Column("starts", _ts(), nullable=True),
        sa.Column("ends", _ts(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
    )
    op.create_table(
        "issued_codes",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(_ID), primary_key=True),
        sa.Column("campaign", sa.String(64), nullable=False),
        sa.Column("member", sa.String(_ID), nullable=True),
        sa.Column("issued_at", _ts(), nullable=False),
        sa.Column("expires", _ts(), nullable=True),
    )
    op.create_index("ix_issued_codes_campaign", "issued_codes", ["store", "campaign", "member"])
    op.create_table(
        "activities",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("title", sa.String(100), nullable=False),
        sa.Column("at", _ts(), nullable=False),
        sa.Column("duration_min", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("signed_up", sa.Integer(), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
    )
    op.create_table(
        "signups",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(_ID), primary_key=True),
        sa.Column("activity", sa.String(64), nullable=False),
        sa.Column("member", sa.String(_ID), nullable=True),
        sa.Column("name", sa.String(100), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("cancelled_at", _ts(), nullable=True),
        sa.Column("arrived_at", _ts(), nullable=True),
    )
    op.create_index("ix_signups_activity", "signups", ["store", "activity"])


def downgrade() -> None:
    for table in ("signups", "activities", "issued_codes", "campaigns"):
        op.drop_table(table)
