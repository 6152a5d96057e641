"""Leases and worker heartbeats: several workers of one service (`run --worker`).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("store", sa.String(64), primary_key=True),
        sa.Column("worker", sa.String(64), primary_key=True),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.Column("lag", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("leases")
