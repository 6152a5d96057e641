"""Telling the database's errors apart: retry it, run it again, or quarantine the rows.

The event sink waits out an unreachable database, re-runs a transaction a concurrent
writer aborted, and quarantines only what the database refuses about the rows themselves.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

#: SQLSTATEs of "run it again": serialization_failure, deadlock_detected.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})


class UnstorableEvent(ValueError):
    """An event the bridge refuses on the database's behalf.

    PostgreSQL's `json` type accepts `\\u0000` but every later `->>` on that row fails
    (no NUL in `text`), which would break today's figures for good; SQLite would keep
    it. Refused up front, such an event is quarantined the same way on both.
    """


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def is_write_conflict(exc: BaseException) -> bool:
    """An abort caused by a concurrent writer, not by the data: the same work will succeed
    when run again (PostgreSQL deadlock or serialization failure, SQLite `locked`)."""
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(orig)


def is_connection_error(exc: BaseException) -> bool:
    """The database is unreachable or busy, not refusing this data: retrying is right.

    Everything else (a DataError, an IntegrityError, a value the driver cannot bind) is
    about the rows themselves and will fail again however often it is retried.
    """
    if isinstance(exc, DisconnectionError | PoolTimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, ConnectionError)


def refused_data(exc: BaseException) -> bool:
    """An error about the rows themselves (a value the database or driver refuses), as
    opposed to the schema or server (missing table, permissions): only the former is
    quarantined; the latter is the operator's to fix, so it is retried."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False
    return isinstance(exc, StatementError | ValueError | TypeError | OverflowError)


def one_line(exc: BaseException) -> str:
    """The driver's message, first line only: no SQL, no parameters in logs or tables."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__
