"""The bridge's database: every event exactly once, the last status of each kiosk, the
commands queued for them, and the events it refused.

`repository` holds the reads and writes, `tables` the schema, `records` what reads
return, `figures` today's counts, `errors` which failures to retry or quarantine.
"""

from cloud_bridge.db.errors import (
    UnstorableEvent,
    is_connection_error,
    is_write_conflict,
    one_line,
    refused_data,
)
from cloud_bridge.db.figures import local_midnight
from cloud_bridge.db.records import KioskState, RejectedEvent, StoredEvent, format_ts
from cloud_bridge.db.repository import Repository, make_engine

__all__ = [
    "KioskState",
    "RejectedEvent",
    "Repository",
    "StoredEvent",
    "UnstorableEvent",
    "format_ts",
    "is_connection_error",
    "is_write_conflict",
    "local_midnight",
    "make_engine",
    "one_line",
    "refused_data",
]
