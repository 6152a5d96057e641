"""Many rows in one INSERT of constant text on PostgreSQL: the rows go as one JSON array,
which the server turns back into rows (`json_to_recordset`).

The ingest writes a batch's events, their roll-ups and the commands they cause (a
member's news for every door, a coupon's for every other door) in a few statements. Run
"executemany" style, psycopg sends a statement per row, each a trip through Python;
SQLAlchemy's multi-row VALUES renders SQL that grows with the batch, which the driver
parses afresh every time; arrays per column are dumped element by element in Python.
One JSON text is written by the json module's C encoder in one call, and the statement
is the same for any number of rows, so the server plans it once. SQLite keeps the plain
forms (`repository.py`, `rollup.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import JSON, Table, Text, bindparam, cast, column, func, select
from sqlalchemy.dialects import postgresql

#: The parameter that holds the rows.
ROWS = "rows"


@cache
def recordset_insert(table: Table, columns: tuple[str, ...]) -> postgresql.Insert:
    """`INSERT INTO table (columns) SELECT … FROM json_to_recordset(:rows)`, run with
    `params(rows)`. ON CONFLICT and RETURNING may be added as to any insert."""
    typed = [column(c, table.c[c].type) for c in columns]
    rows = (
        func.json_to_recordset(cast(bindparam(ROWS, type_=Text), JSON))
        .table_valued(*typed)
        .render_derived(name="r", with_types=True)
    )
    return postgresql.insert(table).from_select(
        list(columns), select(*(rows.c[c] for c in columns))
    )


def params(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The parameters of `recordset_insert`: the rows as one JSON text, times in ISO 8601
    with their offset (as the server reads them); keys that name no column are ignored."""
    return {ROWS: json.dumps(rows, default=_iso, ensure_ascii=False, separators=(",", ":"))}


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # as `UTCDateTime`: a time without its zone is a bug
            raise ValueError("naive datetime: the bridge stores UTC-aware times only")
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
