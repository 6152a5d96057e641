"""Telling the database's errors apart: retry it, run it again, or quarantine the rows.

The event sink waits out an unreachable database, re-runs a transaction a concurrent
writer aborted, and quarantines only what the database refuses about the rows themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
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
    return text_problem(value) == "a NUL character (\\u0000)"


_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: Any) -> str | None:
    """What no database can keep in a JSON value's strings (keys too), or None.

    NUL: PostgreSQL's `text` has none; a lone surrogate (`"\\ud800"` in JSON) is not
    Unicode and cannot be encoded as UTF-8 by either driver. Iterative, so any depth.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "a NUL character (\\u0000)"
            if _SURROGATE.search(item):
                return "a lone surrogate (not Unicode text)"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


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


def safe_text(text: str, max_chars: int = 2000) -> str:
    """Text any database keeps: no NUL, lone surrogates escaped, at most `max_chars`."""
    text = text[:max_chars].replace("\x00", "")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Piece(str):
    """Literal JSON text in `json_preview`'s work list (as opposed to a value)."""


def json_preview(value: Any, max_chars: int) -> str:
    """`value` as compact JSON, cut after `max_chars` characters (with a note saying so).

    Iterative and lazy: a value nested ten thousand deep or holding 10 MB costs no more
    than `max_chars`. NUL and lone surrogates come out escaped (`\\u0000`, `\\ud800`), so
    the text is valid JSON when whole, and any database can keep it either way.
    """
    out: list[str] = []
    size = 0
    todo: list[Iterator[Any]] = [iter([value])]
    while todo:
        try:
            item = next(todo[-1])
        except StopIteration:
            todo.pop()
            continue
        if isinstance(item, _Piece):
            text = str(item)
        elif isinstance(item, dict):
            text = "{"
            todo.append(_object_parts(item, max_chars))
        elif isinstance(item, list | tuple):
            text = "["
            todo.append(_array_parts(item))
        elif isinstance(item, str):
            text = _string(item, max_chars)
        else:
            try:
                text = json.dumps(item)
            except (TypeError, ValueError):  # an int past Python's digit limit, say
                text = '"(a value too long to show)"'
        out.append(text)
        size += len(text)
        if size > max_chars:
            return "".join(out)[:max_chars] + f"… (cut at {max_chars} characters)"
    return "".join(out)


def _string(s: str, max_chars: int) -> str:
    text = json.dumps(s[: max_chars + 1], ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _object_parts(d: dict[Any, Any], max_chars: int) -> Iterator[Any]:
    for i, (k, v) in enumerate(d.items()):
        yield _Piece(("," if i else "") + _string(str(k), max_chars) + ":")
        yield v
    yield _Piece("}")


def _array_parts(items: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    for i, v in enumerate(items):
        if i:
            yield _Piece(",")
        yield v
    yield _Piece("]")
