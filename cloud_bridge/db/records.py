"""What the repository returns: plain frozen values, detached from any session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

#: An event's `ts` further than this from when the bridge received it is flagged.
SKEW = timedelta(days=1)


def plus_skew(t: datetime) -> datetime:
    """`t` + SKEW, held at the last time a datetime holds (a `since` of the year 9999)."""
    last = datetime.max.replace(tzinfo=t.tzinfo)
    return t + SKEW if t < last - SKEW else last


@dataclass(frozen=True)
class RejectedEvent:
    id: str
    store: str
    kiosk: str
    raw: str
    error: str
    received_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "store": self.store,
            "kiosk": self.kiosk,
            "raw": self.raw,
            "error": self.error,
            "received_at": format_ts(self.received_at),
        }


@dataclass(frozen=True)
class StoredEvent:
    id: str
    seq: int
    type: str
    ts: datetime
    store: str
    kiosk: str
    data: dict[str, Any]
    received_at: datetime

    @property
    def ts_flag(self) -> str | None:
        """ "ahead" when `ts` is more than a day after the bridge received the event (a
        kiosk clock running ahead: nothing happens after it arrived), "behind" when more
        than a day before (a clock running behind, or a kiosk that was offline that
        long); None otherwise. Computed when read: nothing about it is stored."""
        if self.ts > self.received_at + SKEW:
            return "ahead"
        if self.ts < self.received_at - SKEW:
            return "behind"
        return None

    @property
    def when(self) -> datetime:
        """When it happened, as far as the bridge can tell: `ts`, or `received_at` for an
        event dated ahead of it. Figures and newest-first lists go by this."""
        return self.received_at if self.ts > self.received_at + SKEW else self.ts

    def envelope(self) -> dict[str, Any]:
        """The event as the contract's envelope (docs/mqtt.md), ts in RFC 3339 UTC."""
        return {
            "id": self.id,
            "seq": self.seq,
            "type": self.type,
            "ts": format_ts(self.ts),
            "store": self.store,
            "kiosk": self.kiosk,
            "data": self.data,
        }


@dataclass(frozen=True)
class KioskState:
    store: str
    kiosk: str
    online: bool
    last_status: dict[str, Any]
    last_seen: datetime | None


def format_ts(dt: datetime) -> str:
    """RFC 3339 UTC with milliseconds (microseconds only when they carry information)."""
    dt = dt.astimezone(UTC)
    frac = (
        f"{dt.microsecond // 1000:03d}" if dt.microsecond % 1000 == 0 else f"{dt.microsecond:06d}"
    )
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"


def stored_event(row: Any) -> StoredEvent:
    """A `StoredEvent` from an events row (an ORM object or a plain row of its columns)."""
    return StoredEvent(
        id=row.id,
        seq=row.seq,
        type=row.type,
        ts=row.ts,
        store=row.store,
        kiosk=row.kiosk,
        data=row.data,
        received_at=row.received_at,
    )
