"""Alembic environment: runs on the connection the bridge hands it (`db.migrate`).

`alembic -c cloud_bridge/migrations/alembic.ini …` is not needed by a shop: `o2o-bridge
run` and `init` upgrade the database themselves. Developers make a new revision with
`alembic revision` pointing `script_location` here (docs/upgrading.md).
"""

from __future__ import annotations

from alembic import context

from cloud_bridge.db.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the bridge runs migrations
    raise RuntimeError("run migrations through cloud_bridge.db.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
