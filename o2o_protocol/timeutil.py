"""Time helpers shared by both sides: RFC 3339 UTC stamps and the CLI's WHEN syntax."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RELATIVE = re.compile(r"([+-])(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def rfc3339(ts: float) -> str:
    """Format Unix seconds as RFC 3339 UTC with milliseconds, the envelope's `ts` form."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 stamp; naive stamps are taken as UTC."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def parse_when(text: str, now: float) -> int:
    """Parse `+2h`, `-1d`, `2026-12-01T10:00` or `2026-12-01` into Unix seconds.

    Raises ValueError with a message fit for a command line.
    """
    text = text.strip()
    m = _RELATIVE.fullmatch(text)
    if m:
        sign = 1 if m.group(1) == "+" else -1
        seconds = float(m.group(2)) * _UNITS[m.group(3)]
        if seconds > 200 * 365 * 86400:
            raise ValueError(f"{text!r} is too far away (at most 200 years)")
        return int(now + sign * seconds)
    try:
        return int(parse_rfc3339(text).timestamp())
    except (ValueError, OverflowError):
        raise ValueError(
            f"{text!r} is not a time: use ISO 8601 (2026-12-01T10:00Z) or an offset (+2h, -1d)"
        ) from None
