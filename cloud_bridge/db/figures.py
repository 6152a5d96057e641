"""Today's figures (the dashboard, `GET /api/v1/stats`, the retained stats topic).

Counted from stored events by their own `ts` (when they happened at the kiosk), within
the shop's local day; except an event dated more than a day after the bridge received it
(a kiosk clock in the year 2999): no event can happen after it arrived, so it counts on
the day it was received. `checkins` counts the visits that counted (`data.counted` true,
or absent as older kiosks write it), not those within the cool-down.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import ColumnElement, and_, case, exists, func, literal_column, not_, or_, select
from sqlalchemy.orm import Session, aliased

from cloud_bridge.db.records import SKEW, format_ts
from cloud_bridge.db.tables import EventRow, KioskRow, MemberRow
from o2o_protocol.messages import EventType


def ahead(dialect: str, row: Any = EventRow) -> ColumnElement[bool]:
    """`ts` more than a day after `received_at`: a kiosk clock running ahead."""
    if dialect == "sqlite":
        # Stored as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): text order is time order.
        return row.ts > func.datetime(row.received_at, "+1 day")
    return row.ts > row.received_at + literal_column("interval '1 day'")


def in_period(dialect: str, start: datetime, end: datetime) -> ColumnElement[bool]:
    """Events of [start, end): by `ts`, or by `received_at` for those dated ahead of it.

    Both halves are ranges of the (store, ts) index: an event dated ahead and received
    on or after `start` has a `ts` after `start + 1 day`."""
    early = ahead(dialect)
    return or_(
        and_(EventRow.ts >= start, EventRow.ts < end, not_(early)),
        and_(
            EventRow.ts > start + SKEW,
            early,
            EventRow.received_at >= start,
            EventRow.received_at < end,
        ),
    )


def counted(dialect: str) -> ColumnElement[bool]:
    """A check-in that counted: `data.counted` true, or absent (older kiosks)."""
    if dialect == "sqlite":
        kind = func.json_type(EventRow.data, "$.counted")
        return or_(kind.is_(None), kind == "true")
    return or_(EventRow.data["counted"].is_(None), EventRow.data["counted"].as_string() == "true")


def local_midnight(now: datetime | None = None, zone: tzinfo | None = None) -> datetime:
    """Start of today in the shop's zone (`zone`; None: the machine's), as an aware
    datetime."""
    local = (now or datetime.now(UTC)).astimezone(zone)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def today_stats(
    session: Session, store: str, *, now: datetime | None = None, zone: tzinfo | None = None
) -> dict[str, Any]:
    """Today's figures for the dashboard and the stats topic: the shop's day, midnight to
    midnight in `zone` (bridge.toml `timezone`; None: the machine's zone)."""
    now = now or datetime.now(UTC)
    start = local_midnight(now, zone)
    end = start + timedelta(days=1)  # wall-clock: the next midnight, even across DST
    dialect = session.get_bind().dialect.name
    in_today = (EventRow.store == store, in_period(dialect, start, end))
    reason = EventRow.data["reason"].as_string()
    by_type = {
        t: int(n)
        for t, n in session.execute(
            select(EventRow.type, func.count()).where(*in_today).group_by(EventRow.type)
        )
    }
    rejections = {
        (r or "unknown"): int(n)
        for r, n in session.execute(
            select(reason, func.count())
            .where(*in_today, EventRow.type == EventType.SCAN_REJECTED.value)
            .group_by(reason)
        )
    }
    kiosks = session.execute(
        select(KioskRow.online, KioskRow.last_status).where(KioskRow.store == store)
    ).all()
    online = [bool(k.online) for k in kiosks]
    doubles = int(session.scalar(_double_redemptions(dialect, store, in_today)) or 0)
    overuses = int(session.scalar(_card_overuses(dialect, store, in_today)) or 0)
    ratings = rating_summary(session, in_today)
    checkins = session.scalar(
        select(func.count())
        .select_from(EventRow)
        .where(*in_today, EventRow.type == EventType.CHECKIN.value, counted(dialect))
    )
    overdrawn = _overdrawn(session, store)
    return {
        "store": store,
        "day": start.strftime("%Y-%m-%d"),
        "ts": format_ts(now),
        "events": sum(by_type.values()),
        "checkins": int(checkins or 0),
        "redemptions": by_type.get(EventType.COUPON_REDEEMED.value, 0),
        "pickups": by_type.get(EventType.PICKUP_COMPLETED.value, 0),
        "reservations": by_type.get(EventType.RESERVATION_ARRIVED.value, 0),
        "joins": by_type.get(EventType.MEMBER_JOINED.value, 0),
        "rejected": by_type.get(EventType.SCAN_REJECTED.value, 0),
        "double_redemptions": doubles,
        "card_overuses": overuses,
        "rejections": dict(sorted(rejections.items())),
        "by_type": dict(sorted(by_type.items())),
        "kiosks_online": sum(online),
        "kiosks_seen": len(online),
        "overdrawn_members": overdrawn,
        "ratings_today": ratings["count"],
        "rating_average_today": ratings["average"],
        "alerts": {
            "kiosk_offline": not all(online),
            "printer_fault": any(k.online and _printer_fault(k.last_status) for k in kiosks),
            "locker_fault": any(k.online and _locker_faults(k.last_status) for k in kiosks),
            "double_redemption": bool(doubles or overuses),
            "overdraft": overdrawn > 0,
        },
    }


#: A kiosk's `printer` states that need someone (docs/mqtt.md): `disabled` (no printer)
#: and `unknown` (not asked yet) do not.
_PRINTER_FAULTS = frozenset({"paper_out", "offline", "error"})


def _printer_fault(status: Any) -> bool:
    """The kiosk's last status says its printer needs attention (a state string, or an
    object with `state`, as the kiosk's Home Assistant template reads it)."""
    printer = status.get("printer") if isinstance(status, dict) else None
    if isinstance(printer, dict):
        printer = printer.get("state")
    return printer in _PRINTER_FAULTS


def _locker_faults(status: Any) -> bool:
    """The kiosk's last status counts a locker fault (`lockers.faults` above zero)."""
    lockers = status.get("lockers") if isinstance(status, dict) else None
    faults = lockers.get("faults") if isinstance(lockers, dict) else None
    return isinstance(faults, int) and not isinstance(faults, bool) and faults > 0


def rating_summary(session: Session, where: Sequence[ColumnElement[bool]]) -> dict[str, Any]:
    """The ratings (`review.submitted`, an integer 1-5) among the events `where` selects:
    how many, their average (None without any), how many of each, and per subject."""
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        whole = func.json_type(EventRow.data, "$.rating") == "integer"
    else:
        whole = func.json_typeof(EventRow.data["rating"]) == "number"
    # One expression object each, so PostgreSQL sees the same GROUP BY as SELECT.
    rating, subject = EventRow.data["rating"].as_string(), EventRow.data["subject"].as_string()
    rows = session.execute(
        select(rating, subject, func.count())
        .where(*where, EventRow.type == EventType.REVIEW_SUBMITTED.value, whole)
        .group_by(rating, subject)
    )
    distribution = dict.fromkeys(("1", "2", "3", "4", "5"), 0)
    subjects: dict[str, list[int]] = {}
    for value, about, n in rows:
        key = str(value)
        if key not in distribution:
            continue  # 0, 6, 4.0: not a rating
        distribution[key] += int(n)
        tally = subjects.setdefault(about or "other", [0, 0])
        tally[0] += int(n)
        tally[1] += int(n) * int(key)
    count = sum(distribution.values())
    total = sum(int(k) * n for k, n in distribution.items())
    return {
        "count": count,
        "average": round(total / count, 2) if count else None,
        "distribution": distribution,
        "by_subject": {
            s: {"count": n, "average": round(t / n, 2)} for s, (n, t) in sorted(subjects.items())
        },
    }


def _overdrawn(session: Session, store: str) -> int:
    """Members below zero now (not only today's): they need the owner until settled."""
    stmt = select(func.count()).where(MemberRow.store == store, MemberRow.points < 0)
    return int(session.scalar(stmt) or 0)


def _earlier_uses(first: Any) -> list[ColumnElement[bool]]:
    """`first`: a redemption of the same code stored before this one (an index range of
    (store, coupon_id) per redemption, not a look into every one's JSON)."""
    return [
        first.store == EventRow.store,
        first.coupon_id == EventRow.coupon_id,
        first.type == EventType.COUPON_REDEEMED.value,
        first.id != EventRow.id,
        or_(
            first.received_at < EventRow.received_at,
            and_(first.received_at == EventRow.received_at, first.id < EventRow.id),
        ),
    ]


def card_uses(dialect: str) -> ColumnElement[Any]:
    """A visit card's uses as its redemption states them (`data.uses`, an integer >= 2);
    NULL for a coupon (and for anything else a kiosk wrote there)."""
    if dialect == "sqlite":
        whole = func.json_type(EventRow.data, "$.uses") == "integer"
    else:
        text = EventRow.data["uses"].as_string()
        whole = and_(
            func.json_typeof(EventRow.data["uses"]) == "number", text.regexp_match(r"^[0-9]{1,9}$")
        )
    n = EventRow.data["uses"].as_integer()
    # Nested, so the cast runs only on what is a whole number (PostgreSQL).
    return case((whole, case((n >= 2, n), else_=None)), else_=None)


def _double_redemptions(dialect: str, store: str, in_today: tuple[ColumnElement[bool], ...]) -> Any:
    """Today's redemptions of a coupon the bridge had already stored as redeemed
    (under another event id): two kiosks that were offline at once both accepted it.
    A visit card's uses are not (`_card_overuses` counts those past its number)."""
    first = aliased(EventRow)
    return (
        select(func.count())
        .select_from(EventRow)
        .where(
            *in_today,
            EventRow.type == EventType.COUPON_REDEEMED.value,
            EventRow.coupon_id.is_not(None),
            card_uses(dialect).is_(None),
            exists().where(*_earlier_uses(first)),
        )
    )


def _card_overuses(dialect: str, store: str, in_today: tuple[ColumnElement[bool], ...]) -> Any:
    """Today's uses of a visit card past its number (`uses` stored before this one):
    doors that were offline at once each let the card in."""
    first = aliased(EventRow)
    uses = card_uses(dialect)
    before = select(func.count()).select_from(first).where(*_earlier_uses(first))
    return (
        select(func.count())
        .select_from(EventRow)
        .where(
            *in_today,
            EventRow.type == EventType.COUPON_REDEEMED.value,
            EventRow.coupon_id.is_not(None),
            uses.is_not(None),
            before.scalar_subquery() >= uses,
        )
    )
