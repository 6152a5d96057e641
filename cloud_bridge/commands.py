"""Checking commands before they are queued, shared by the API and the ingest.

A queued command is re-sent until the kiosk reports it applied, possibly much later (a
kiosk with a fresh store is sent its whole history again), so a bad one must be refused
at the door, and one that is only safe now (opening a locker) must carry an expiry.
"""

from __future__ import annotations

import time
from typing import Any

from o2o_protocol.messages import COMMAND_DATA, CommandName, command_data

#: How long a `locker.open` without its own `expires` stays valid: a locker must never
#: open hours after someone asked for it.
LOCKER_OPEN_TTL_S = 300


def checked_command(name: str, data: dict[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """The data to queue for command `name`; ValueError (a message for the caller) if the
    name is unknown or the data does not fit the command."""
    if name not in COMMAND_DATA:
        raise ValueError(f"unknown command {name!r}: use one of {', '.join(COMMAND_DATA)}")
    command_data(name, data)  # ProtocolError, a ValueError, names the bad field
    if name == CommandName.LOCKER_OPEN and data.get("expires") is None:
        data = {**data, "expires": int(time.time() if now is None else now) + LOCKER_OPEN_TTL_S}
    return data
