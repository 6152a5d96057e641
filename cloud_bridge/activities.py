"""In-store activities members sign up for online (docs/campaigns.md#activities).

A sign-up takes a place (exactly: `db/activities.py`) and comes back with a ticket: a
reservation code (`t: "r"`) signed with the store's key that names its activity (`ac`),
its title (`sv`) and its start (`at`), valid until an hour after the activity ends.
The kiosk treats it like any reservation and says `activity` in `reservation.arrived`;
`after_stored` records that arrival. A cancelled ticket is revoked at every kiosk.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository, format_ts
from cloud_bridge.db.activities import (
    ActivityBook,
    ActivityRecord,
    Attendance,
    Refusal,
    SignupRecord,
)
from cloud_bridge.issuing import IssuedCode
from o2o_protocol.codes import CodeType, issue_code
from o2o_protocol.messages import CommandName, Event, EventType
from o2o_protocol.timeutil import parse_rfc3339

log = logging.getLogger(__name__)

#: How long after its end an activity's ticket is still accepted at the door.
TICKET_GRACE = timedelta(hours=1)
DEFAULT_DURATION_MIN = 60

_LOCAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})", re.I)


def new_activity_id() -> str:
    return "ac-" + secrets.token_hex(4)


def new_signup_id() -> str:
    return "su-" + secrets.token_hex(6)


def parse_time(text: str, zone: tzinfo) -> datetime:
    """A time in a request body: RFC 3339 with its offset (`2026-12-05T14:00:00+08:00`,
    `…Z`), or `YYYY-MM-DDTHH:MM` on the shop's wall clock (`zone`). ValueError otherwise."""
    if _LOCAL.fullmatch(text):
        try:
            return datetime.fromisoformat(text).replace(tzinfo=zone)
        except ValueError:
            raise ValueError(f"{text!r} is not a date and time") from None
    if not _OFFSET.fullmatch(text):
        raise ValueError(
            f"{text!r}: write RFC 3339 with an offset (2026-12-05T14:00:00+08:00) "
            "or the shop's local time (2026-12-05T14:00)"
        )
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise ValueError(f"{text!r} is not a date and time") from None


class ActivityError(Exception):
    """A request the activities cannot take; `status` is the HTTP answer (404, 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ActivityService:
    """Activities, sign-ups with their tickets, cancellations, and attendance."""

    def __init__(
        self,
        repo: Repository,
        config: BridgeConfig,
        key: Ed25519PrivateKey | None,
        commands: CommandService,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Without `key` no tickets can be signed (sign-ups fail); attendance still
        counts. `clock` (Unix seconds) lets tests move past an activity's end."""
        self.repo = repo
        self.config = config
        self.store = config.store
        self.key = key
        self.commands = commands
        self.book = ActivityBook(repo, config.store)
        self.zone = config.zone()
        self.clock = clock

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def kiosks(self) -> list[str]:
        """The configured kiosks, then any other the bridge has heard from."""
        return self.commands.kiosks(self.config.kiosks)

    # -- activities -------------------------------------------------------------------

    def add(
        self, *, title: str, at: datetime, capacity: int, duration_min: int | None = None
    ) -> ActivityRecord:
        """A new activity; ValueError (the message fit for a client) when it starts in
        the past."""
        if at <= self.now():
            raise ValueError("at: the activity would start in the past")
        return self.book.add(
            new_activity_id(),
            title=title,
            at=at,
            duration_min=duration_min or DEFAULT_DURATION_MIN,
            capacity=capacity,
            now=self.now(),
        )

    def activity(self, id: str) -> ActivityRecord | None:
        return self.book.activity(id)

    def activities(self) -> list[ActivityRecord]:
        return self.book.activities()

    def as_dict(self, a: ActivityRecord, attendance: Attendance | None = None) -> dict[str, Any]:
        """The API's view: `no_shows` only once the activity has ended (null before)."""
        if attendance is None:
            attendance = self.book.attendance([a.id])[a.id]
        ended = self.now() >= a.ends
        return {
            "id": a.id,
            "title": a.title,
            "at": format_ts(a.at),
            "local_at": a.at.astimezone(self.zone).strftime("%Y-%m-%dT%H:%M"),
            "duration_min": a.duration_min,
            "ends": format_ts(a.ends),
            "capacity": a.capacity,
            "signed_up": a.signed_up,
            "attended": attendance.attended,
            "no_shows": attendance.absent if ended else None,
            "created_at": format_ts(a.created_at),
        }

    def listing(self) -> list[dict[str, Any]]:
        """Every activity with its counts (two queries, whatever their number)."""
        items = self.activities()
        counts = self.book.attendance(a.id for a in items)
        return [self.as_dict(a, counts[a.id]) for a in items]

    # -- sign-ups ---------------------------------------------------------------------

    def sign_up(
        self, activity_id: str, *, name: str | None = None, member: str | None = None
    ) -> tuple[SignupRecord, IssuedCode]:
        """Take a place and sign its ticket. ActivityError 404 (unknown activity), 409
        (full, or already started); nothing is taken then."""
        activity = self.book.activity(activity_id)
        if activity is None:
            raise ActivityError(404, f"no activity {activity_id!r}")
        if self.key is None:
            raise RuntimeError("no signing key: tickets cannot be signed")
        now = self.clock()
        id = new_signup_id()
        exp = int((activity.ends + TICKET_GRACE).timestamp())
        token = issue_code(
            self.key,
            type=CodeType.RESERVATION,
            id=id,
            store=self.store,
            iat=int(now),
            exp=exp,
            at=int(activity.at.timestamp()),
            sv=activity.title,
            n=name,
            ac=activity.id,
        )
        result = self.book.sign_up(
            activity_id, id, member=member, name=name, now=datetime.fromtimestamp(now, UTC)
        )
        if isinstance(result, str):
            raise ActivityError(*_REFUSED[result](activity_id))
        return result, IssuedCode(token=token, type="reservation", id=id, store=self.store, exp=exp)

    def signup_dict(self, s: SignupRecord, code: IssuedCode | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": s.id,
            "activity": s.activity,
            "name": s.name,
            "member": s.member,
            "created_at": format_ts(s.created_at),
            "cancelled_at": format_ts(s.cancelled_at) if s.cancelled_at else None,
            "arrived_at": format_ts(s.arrived_at) if s.arrived_at else None,
        }
        if code is not None:
            issued = code.as_dict(self.config.api.code_url)
            out.update(code=issued["code"], exp=issued["exp"])
            if "url" in issued:
                out["url"] = issued["url"]
        return out

    def cancel(self, activity_id: str, signup_id: str) -> SignupRecord:
        """Give the place back and revoke the ticket at every kiosk of the store.
        ActivityError 404 (no such sign-up of that activity), 409 (cancelled already)."""
        result = self.book.cancel(activity_id, signup_id, now=self.now())
        if result == "unknown":
            raise ActivityError(404, f"no sign-up {signup_id!r} for activity {activity_id!r}")
        if result == "cancelled":
            raise ActivityError(409, f"sign-up {signup_id!r} is cancelled already")
        assert not isinstance(result, str)
        for kiosk in self.kiosks():
            try:
                self.commands.send(kiosk, CommandName.CODE_REVOKE.value, {"id": signup_id})
            except Exception:
                # Queued or not, one kiosk's fault must not keep the others in the dark.
                log.exception("could not revoke ticket %s at kiosk %s", signup_id, kiosk)
        return result

    # -- attendance -------------------------------------------------------------------

    def after_stored(self, events: Sequence[Event], new: set[str]) -> None:
        """AfterStored: a newly stored `reservation.arrived` naming an activity marks
        that sign-up as arrived (the first time only), at the event's own time."""
        self._mark([e for e in events if e.id in new])

    def catch_up(self, since: datetime, until: datetime | None = None) -> int:
        """Mark the arrivals stored since `since` (received before `until`: younger ones
        may still be on their way through the hook) that the hook missed (it runs after
        the events are stored and acked, so a fault in between would lose one). Safe any
        time: a sign-up is marked once. Returns how many it marked."""
        stored = self.repo.iter_events(
            store=self.store, type=EventType.RESERVATION_ARRIVED.value, since=since
        )
        marked = self._mark(
            [
                Event.model_validate(e.envelope())
                for e in stored
                if until is None or e.received_at < until
            ]
        )
        if marked:
            log.warning("marked %d arrival(s) the attendance had missed", marked)
        return marked

    def _mark(self, events: Sequence[Event]) -> int:
        by_time: dict[datetime, list[tuple[str, str]]] = {}
        for e in events:
            if e.type != EventType.RESERVATION_ARRIVED.value:
                continue
            activity, ticket = e.data.get("activity"), e.data.get("reservation_id")
            if isinstance(activity, str) and isinstance(ticket, str):
                by_time.setdefault(parse_rfc3339(e.ts), []).append((activity, ticket))
        return sum(self.book.arrived(tickets, at) for at, tickets in by_time.items())


_REFUSED: dict[Refusal, Callable[[str], tuple[int, str]]] = {
    "unknown": lambda a: (404, f"no activity {a!r}"),
    "full": lambda a: (409, f"activity {a!r} is full"),
    "started": lambda a: (409, f"activity {a!r} has started: sign-ups are closed"),
}
