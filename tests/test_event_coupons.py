"""A redemption's coupon, kept beside its event (`events.coupon_id`, tables.py `coupon_of`).

The figures and the coupon rule look coupons up by that column (an index range) instead
of every redemption's JSON; these tests hold the insert to filling it, on SQLite and on
PostgreSQL, and the figures to what the stored redemptions say.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from cloud_bridge.db import Repository
from cloud_bridge.db.tables import EventRow
from o2o_protocol.messages import Event
from o2o_protocol.timeutil import rfc3339

STORE = "s1"
NOW = datetime(2026, 3, 11, 15, 0, tzinfo=UTC)


def _event(n: int, type_: str, data: dict[str, Any], *, at: datetime = NOW) -> Event:
    return Event(
        id=f"0195-{n:012d}",
        seq=n,
        type=type_,
        ts=rfc3339(at.timestamp()),
        store=STORE,
        kiosk=f"k{n % 3 + 1}",
        data=data,
    )


def test_each_stored_redemption_carries_its_coupon(any_repo: Repository) -> None:
    """Text of up to 256 characters, whatever its letters; NULL for a number, a longer
    text, a redemption without a coupon and any other event naming one."""
    longest, too_long = "c" * 256, "c" * 257
    coupons: list[tuple[str, dict[str, Any], str | None]] = [
        ("coupon.redeemed", {"coupon_id": "cp-1", "value": "10%"}, "cp-1"),
        ("coupon.redeemed", {"coupon_id": "春季-7"}, "春季-7"),
        ("coupon.redeemed", {"coupon_id": longest}, longest),
        ("coupon.redeemed", {"coupon_id": ""}, ""),
        ("coupon.redeemed", {"coupon_id": too_long}, None),
        ("coupon.redeemed", {"coupon_id": 42}, None),
        ("coupon.redeemed", {"coupon_id": ["cp-1"]}, None),
        ("coupon.redeemed", {"coupon_id": None}, None),
        ("coupon.redeemed", {"value": "10%"}, None),
        ("scan.rejected", {"reason": "already_used", "coupon_id": "cp-1"}, None),
        ("checkin", {"member_id": "ada", "coupon_id": "cp-1"}, None),
    ]
    events = [_event(n, t, d) for n, (t, d, _) in enumerate(coupons, 1)]
    assert len(any_repo.add_events(events, now=NOW)) == len(events)
    with any_repo.engine.connect() as conn:
        got = dict(conn.execute(select(EventRow.id, EventRow.coupon_id)).all())
    assert got == {e.id: want for e, (_, _, want) in zip(events, coupons, strict=True)}


def test_the_figures_count_what_the_stored_redemptions_say(any_repo: Repository) -> None:
    """Which use of a coupon is the double one goes by when the bridge stored it: a later
    batch, or the same batch and a greater id; a visit card's uses past its number are
    overuses. Uses made yesterday count towards today's but are not today's."""
    yesterday, midnight = NOW - timedelta(days=1), NOW.replace(hour=0)
    night, morning = midnight - timedelta(hours=1), midnight + timedelta(hours=8)

    def batch(received: datetime, *uses: tuple[int, str, datetime, int | None]) -> None:
        events = []
        for number, coupon, at, card in uses:
            data: dict[str, Any] = {"coupon_id": coupon}
            if card is not None:
                data["uses"] = card
            events.append(_event(number, "coupon.redeemed", data, at=at))
        any_repo.add_events(events, now=received)

    batch(yesterday, (50, "a", yesterday, None), (70, "card", yesterday, 2))
    # Stored together: 10 came first (smaller id), so the double is 20, made yesterday.
    batch(morning, (20, "b", night, None), (10, "b", morning, None))
    batch(NOW - timedelta(hours=5), (60, "a", morning, None), (71, "card", morning, 2))
    batch(NOW - timedelta(hours=4), (72, "card", morning, 2), (80, "pass", morning, 3))
    batch(NOW - timedelta(hours=3), (81, "pass", morning, 3), (82, "pass", morning, 3))
    batch(NOW - timedelta(hours=2), (83, "pass", morning, 3), (90, "d", morning, None))

    stats = any_repo.today_stats(STORE, now=NOW, zone=UTC)
    # Doubles: 60 (a); overuses: 72 (the card's third use), 83 (the pass's fourth).
    assert (stats["double_redemptions"], stats["card_overuses"]) == (1, 2)
    found = any_repo.redemptions_of(STORE, ["a", "b", "card", "zz"])
    assert {c: [e.seq for e in found[c]] for c in found} == {
        "a": [50, 60],
        "b": [10, 20],
        "card": [70, 71, 72],
    }
