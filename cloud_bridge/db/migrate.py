"""Bring a database to the current schema with Alembic (cloud_bridge/migrations).

Shops keep their data across upgrades: the bridge upgrades its database when it starts.
A database made by release 0.1, which had no Alembic, is recognised by its tables and
stamped as revision 0001 first. On PostgreSQL an advisory lock makes workers starting
together take turns, so one upgrades and the others find it done.
"""

from __future__ import annotations

import logging

# Alembic's own INFO lines (plugin set-up, each step) are not for a shop owner's log;
# `migrate` says in one line what it upgraded. Set before alembic is imported.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import Connection, Engine, inspect, text  # noqa: E402

log = logging.getLogger(__name__)

#: The revision a 0.1 database (tables, no alembic_version) is at.
RELEASE_0_1 = "0001"
#: pg_advisory_xact_lock key: "o2o-migrate" as a number.
_LOCK = 0x6F326F2D6D6967


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "cloud_bridge:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this release knows."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    """The database's revision; None for an empty one, `0001` for a 0.1 database."""
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
        if rev is None and inspect(conn).has_table("events"):
            return RELEASE_0_1
        return rev


def migrate(engine: Engine) -> None:
    """Upgrade the database to `head()`; a no-op when it is there already."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        cfg = alembic_config(conn)
        inspector = inspect(conn)
        if not inspector.has_table("alembic_version") and inspector.has_table("events"):
            command.stamp(cfg, RELEASE_0_1)
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(cfg, "head")
        after = MigrationContext.configure(conn).get_current_revision()
    if before != after:
        log.info("database schema upgraded from %s to %s", before or "empty", after)
