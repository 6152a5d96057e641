"""A redemption's coupon as a column of its own, indexed with the store.

`events.coupon_id` holds `data.coupon_id` of each `coupon.redeemed` event when it is text
of at most 256 characters (the ids `coupon.used` carries to other doors), NULL for any
other value and every other event; `ix_events_store_coupon` on (store, coupon_id) then
finds a coupon's earlier redemptions (today's double redemptions, a visit card's uses,
the redemptions of a stored batch) without reading every redemption's JSON. Filled from
the stored redemptions in one `UPDATE` with the rule the bridge keeps from now on
(cloud_bridge/db/tables.py `coupon_of`). Self-contained on purpose (plain SQL, no app
code). `data` is JSON (not JSONB) on PostgreSQL: `->>` and `json_typeof`.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COUPON = 256

#: Per dialect: the coupon, and that it is text that fits.
_SQLITE = (
    "json_extract(data, '$.coupon_id')",
    f"json_type(data, '$.coupon_id') = 'text' "
    f"AND length(json_extract(data, '$.coupon_id')) <= {_COUPON}",
)
_POSTGRESQL = (
    "data ->> 'coupon_id'",
    f"json_typeof(data -> 'coupon_id') = 'string' "
    f"AND char_length(data ->> 'coupon_id') <= {_COUPON}",
)


def upgrade() -> None:
    op.add_column("events", sa.Column("coupon_id", sa.String(_COUPON), nullable=True))
    coupon, fits = _SQLITE if op.get_bind().dialect.name == "sqlite" else _POSTGRESQL
    op.execute(f"UPDATE events SET coupon_id = {coupon} WHERE type = 'coupon.redeemed' AND {fits}")
    op.create_index("ix_events_store_coupon", "events", ["store", "coupon_id"])


def downgrade() -> None:
    op.drop_index("ix_events_store_coupon", table_name="events")
    op.drop_column("events", "coupon_id")
