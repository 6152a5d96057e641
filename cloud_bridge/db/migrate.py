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

from typing import Any  # noqa: E402

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

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
    """Upgrade the database to `head()`, all of it or nothing; a no-op when it is there.

    One transaction holds the whole upgrade, so a power cut or a full disk half-way leaves
    the database as it was, and the next start upgrades it again. PostgreSQL's DDL is
    transactional already; SQLite's is too, once the driver stops committing on its own
    (`_sqlite_migration_engine`).
    """
    own = _sqlite_migration_engine(engine) if engine.dialect.name == "sqlite" else None
    try:
        with (own or engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
            cfg = alembic_config(conn)
            before = MigrationContext.configure(conn).get_current_revision()
            if before is None and inspect(conn).has_table("events"):
                command.stamp(cfg, RELEASE_0_1)  # a 0.1 database: it had no Alembic
                before = RELEASE_0_1
            command.upgrade(cfg, "head")
            after = MigrationContext.configure(conn).get_current_revision()
    finally:
        if own is not None:
            own.dispose()
    if before != after:
        log.info("database schema upgraded from %s to %s", before or "empty", after)


def _sqlite_migration_engine(engine: Engine) -> Engine:
    """The same SQLite file, for the upgrade only, with DDL inside the transaction.

    Python's sqlite3 runs `CREATE TABLE` outside any transaction and commits it at once,
    so an upgrade that failed half-way would keep `alembic_version` and some tables but
    not their rows. With the driver's own transaction handling off and `BEGIN IMMEDIATE`
    issued here, everything is in one transaction, which also holds SQLite's write lock
    from the start: two bridges starting together take turns, like PostgreSQL's lock.
    """
    own = create_engine(engine.url, connect_args={"timeout": 30}, poolclass=NullPool)

    @event.listens_for(own, "connect")
    def _no_driver_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(own, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return own
