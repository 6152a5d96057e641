"""The owner's insights from known traffic, in a shop in Shanghai: four weeks with a quiet
Tuesday 14:00, check-ins near midnight (UTC and Shanghai), regulars, a newcomer, members
who stopped coming, pickups, ratings; on SQLite and PostgreSQL, and once through a real
Mosquitto as a kiosk sends them."""

from __future__ import annotations

import contextlib
import itertools
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from cloud_bridge.api import create_app
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.config_file import ConfigError, validate_config
from o2o_protocol.messages import Event, dumps, new_event_id
from o2o_protocol.timeutil import rfc3339
from o2o_protocol.topics import kiosk_topic
from tests.support import MosquittoBroker
from tests.test_bridge_ingest import STORE, Peer

SHANGHAI = ZoneInfo("Asia/Shanghai")
TOKEN = "t0ken-for-tests-0123456789"
READ = "read-0nly-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_AUTH = {"Authorization": f"Bearer {READ}"}
KEY = Ed25519PrivateKey.generate()
OPEN = [{"days": [1, 2, 3, 4, 5, 6, 7], "from": "08:00", "to": "18:00"}]
#: Four whole weeks, Monday 5 October to Sunday 1 November 2026 (shop days).
FIRST, LAST = date(2026, 10, 5), date(2026, 11, 1)
REGULARS = [f"c{i:02d}" for i in range(20)]


def config_for(tmp_path: Path, **extra: Any) -> BridgeConfig:
    raw = {"store": STORE, "kiosks": ["k1"], "timezone": "Asia/Shanghai", **extra}
    return validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)


def client_for(config: BridgeConfig, repo: Repository) -> TestClient:
    app = create_app(config, repo, token=TOKEN, read_token=READ, signing_key=KEY)
    return TestClient(app)


@dataclass
class Traffic:
    """Events as a kiosk would send them, and what the shop knows they mean."""

    events: list[Event] = field(default_factory=list)
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, type_: str, local: datetime, **data: Any) -> None:
        at = local.replace(tzinfo=SHANGHAI) if local.tzinfo is None else local
        self.events.append(
            Event(
                id=new_event_id(),
                seq=next(self.seq),
                type=type_,
                ts=rfc3339(at.timestamp()),
                store=STORE,
                kiosk="k1",
                data=data,
            )
        )

    def checkin(self, local: datetime, member: str, counted: bool = True) -> None:
        self.add("checkin", local, member_id=member, counted=counted, points_earned=0)

    def counted_checkins(self) -> list[tuple[datetime, str]]:
        """(shop time, member) of every counted check-in sent."""
        out = []
        for e in self.events:
            if e.type == "checkin" and e.data.get("counted", True):
                at = datetime.fromisoformat(e.ts.replace("Z", "+00:00")).astimezone(SHANGHAI)
                out.append((at, e.data["member_id"]))
        return out


def shop_traffic(first: date = FIRST, last: date = LAST, *, midnight: bool = True) -> Traffic:
    """Open 08:00-18:00 every day, 3 check-ins an hour by the regulars, but Tuesday 14:00
    has 1 and Thursday 09:00 has 2; plus the members whose figures the tests know."""
    t = Traffic()
    regulars = itertools.cycle(REGULARS)
    for member in REGULARS:  # all of them came before the range too
        t.checkin(datetime(2026, 9, 15, 10, 5), member)
    day = first
    while day <= last:
        for hour in range(8, 18):
            n = {(1, 14): 1, (3, 9): 2}.get((day.weekday(), hour), 3)
            for i in range(n):
                t.checkin(datetime(day.year, day.month, day.day, hour, 10 + 15 * i), next(regulars))
        day += timedelta(days=1)
    t.checkin(datetime(2026, 10, 20, 10, 20), "n1")  # first ever visit: new
    t.add("member.joined", datetime(2026, 10, 12, 9, 0), member_id="n2")  # joined: new
    t.checkin(datetime(2026, 8, 3, 11, 0), "l1")  # lapsed: last seen 10 August
    t.checkin(datetime(2026, 8, 10, 11, 0), "l1")
    t.checkin(datetime(2026, 10, 1, 11, 0), "l2")  # lapsed: before the 4 weeks up to 1 Nov
    t.checkin(datetime(2026, 10, 14, 11, 0), "x1", counted=False)  # within the cool-down
    if midnight:
        # 00:30 Monday 5 Oct in Shanghai is 16:30 Sunday UTC: in the range.
        t.checkin(datetime(2026, 10, 4, 16, 30, tzinfo=UTC), "c00")
        # 23:30 Sunday 4 Oct in Shanghai (15:30 UTC): the day before the range.
        t.checkin(datetime(2026, 10, 4, 23, 30), "c00")
        # 00:30 Monday 2 Nov in Shanghai is still 1 Nov in UTC: after the range.
        t.checkin(datetime(2026, 11, 1, 16, 30, tzinfo=UTC), "c01")
    # Three orders: 30, 60 (from the first load) and 90 minutes from loaded to picked up.
    for order, loaded, done in (
        ("o1", [(10, 0)], (10, 30)),
        ("o2", [(9, 0), (9, 5)], (10, 0)),
        ("o3", [(10, 0)], (11, 30)),
    ):
        for h, m in loaded:
            t.add("locker.loaded", datetime(2026, 10, 7, h, m), order=order, locker="L1")
        t.add("pickup.completed", datetime(2026, 10, 7, *done), order=order, locker="L1")
    t.add("pickup.completed", datetime(2026, 10, 8, 12, 0), order="o9", locker="L2")  # no load
    t.add("coupon.redeemed", datetime(2026, 10, 9, 15, 0), coupon_id="cp1")
    t.add("reservation.arrived", datetime(2026, 10, 9, 16, 0), reservation_id="r1")
    t.add("review.submitted", datetime(2026, 10, 9, 15, 5), rating=5, subject="checkin")
    t.add("review.submitted", datetime(2026, 10, 9, 15, 6), rating=3, subject="pickup")
    return t


def expected_grid(t: Traffic, first: date, last: date) -> list[list[int]]:
    grid = [[0] * 24 for _ in range(7)]
    for at, _ in t.counted_checkins():
        if first <= at.date() <= last:
            grid[at.weekday()][at.hour] += 1
    return grid


def expected_daily(t: Traffic, first: date, last: date) -> list[dict[str, Any]]:
    kinds = Counter()
    for e in t.events:
        at = datetime.fromisoformat(e.ts.replace("Z", "+00:00")).astimezone(SHANGHAI).date()
        if e.type != "checkin" or e.data.get("counted", True):
            kinds[(at, e.type)] += 1
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    return [
        {
            "date": d.isoformat(),
            "checkins": kinds[(d, "checkin")],
            "redemptions": kinds[(d, "coupon.redeemed")],
            "pickups": kinds[(d, "pickup.completed")],
            "joins": kinds[(d, "member.joined")],
        }
        for d in days
    ]


def insights(client: TestClient, first: date = FIRST, last: date = LAST) -> dict[str, Any]:
    r = client.get(f"/api/v1/insights?from={first}&to={last}", headers=READ_AUTH)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_figures_are_what_the_doors_saw_in_shop_time(
    tmp_path: Path, any_repo: Repository
) -> None:
    t = shop_traffic()
    any_repo.add_events(t.events)
    config = config_for(tmp_path, opening_hours=OPEN)
    client = client_for(config, any_repo)
    members = client.app.state.members  # type: ignore[attr-defined]
    members.create("l1", "Lee")
    members.change_points("l1", 30, "welcome")
    members.create("l2", "Wang")
    members.change_points("l2", 10, "welcome")
    got = insights(client)

    assert (got["from"], got["to"], got["timezone"]) == (
        "2026-10-05",
        "2026-11-01",
        "Asia/Shanghai",
    )
    grid = got["checkins_by_weekday_hour"]
    assert grid == expected_grid(t, FIRST, LAST)
    # The Monday 00:30 check-in (Sunday in UTC) is Monday's; the ones just outside are not.
    assert grid[0][0] == 1 and grid[6][23] == 0 and grid[0][16] == 4 * 3
    assert grid[1][14] == 4  # one each Tuesday at 14:00
    assert got["daily"] == expected_daily(t, FIRST, LAST)
    assert got["daily"][0]["checkins"] == 30 + 1  # ten open hours of 3, and 00:30
    assert sum(d["checkins"] for d in got["daily"]) == sum(map(sum, grid))

    # The quietest open hour first: Tuesday 14:00 (1 a week), then Thursday 09:00 (2).
    assert got["open_hours"] == OPEN
    assert got["slow_hours"][:2] == [
        {"weekday": 1, "hour": 14, "checkins": 4, "per_week": 1.0},
        {"weekday": 3, "hour": 9, "checkins": 8, "per_week": 2.0},
    ]
    assert len(got["slow_hours"]) == 10
    assert all(8 <= h["hour"] < 18 for h in got["slow_hours"] + got["busy_hours"])
    # The busiest: Tuesday 10:00, where the newcomer came on top of the regulars.
    assert got["busy_hours"][0] == {"weekday": 1, "hour": 10, "checkins": 13, "per_week": 3.25}

    # 20 regulars (seen in September too) and the newcomer n1 visited; n1 and n2 (who
    # only joined) are new; l1 and l2 have not come for over 4 weeks; x1's visit did not
    # count.
    assert got["members"] == {"visited": 21, "new": 2, "returning": 20, "lapsed": 2}
    assert got["repeat_visit_rate"] == round(20 / 21, 4)
    assert got["lapsed_members"] == [
        {"id": "l2", "name": "Wang", "last_visit": "2026-10-01T03:00:00.000Z", "visits": 1,
         "points": 10},
        {"id": "l1", "name": "Lee", "last_visit": "2026-08-10T03:00:00.000Z", "visits": 2,
         "points": 30},
    ]  # fmt: skip
    assert got["points_outstanding"] == 40
    assert got["pickup_lead_time_min"] == {"count": 3, "median": 60.0, "p90": 84.0}
    assert got["ratings"]["count"] == 2 and got["ratings"]["average"] == 4.0
    assert got["ratings"]["by_subject"]["pickup"] == {"count": 1, "average": 3.0}
    funnel = {f["stage"]: f for f in got["funnel"]}
    assert [f["stage"] for f in got["funnel"]] == ["discover", "attract", "experience", "retain"]
    assert funnel["attract"]["count"] == 2  # the coupon and the reservation
    assert funnel["experience"]["count"] == sum(map(sum, grid)) + 4  # and 4 pickups
    assert funnel["retain"]["count"] == 20
    assert all(f["name"] for f in got["funnel"])

    # The forecast: the 7 days after `to`, hour by hour, with its backtest.
    assert [f["date"] for f in got["forecast"]] == [
        (LAST + timedelta(days=i)).isoformat() for i in range(1, 8)
    ]
    assert all(len(f["by_hour"]) == 24 for f in got["forecast"])
    assert set(got["backtest"]) == {"mae", "seasonal_naive_mae", "weeks", "method"}
    suggestion = got["suggestion"]
    assert (suggestion["weekday"], suggestion["hour"]) == (1, 14)
    assert (suggestion["from"], suggestion["to"]) == ("14:00", "15:00")
    assert suggestion["campaign"]["kind"] == "flash_sale"
    assert suggestion["campaign"]["hours"] == [{"days": [2], "from": "14:00", "to": "15:00"}]


def test_open_hours_are_inferred_from_the_check_ins(tmp_path: Path, any_repo: Repository) -> None:
    """Open: the weekday-hours with check-ins in at least a quarter of the weeks."""
    last = date(2026, 11, 8)  # five weeks
    t = shop_traffic(FIRST, last, midnight=False)
    # A late visitor on one Friday of five (less than a quarter): the shop is not open.
    t.checkin(datetime(2026, 10, 16, 21, 0), "c05")
    # Two Saturdays of five at 19:00: it is.
    t.checkin(datetime(2026, 10, 10, 19, 0), "c06")
    t.checkin(datetime(2026, 10, 24, 19, 0), "c06")
    any_repo.add_events(t.events)
    got = insights(client_for(config_for(tmp_path), any_repo), FIRST, last)
    assert got["open_hours"] == [
        {"days": [1, 2, 3, 4, 5, 6, 7], "from": "08:00", "to": "18:00"},
        {"days": [6], "from": "19:00", "to": "20:00"},
    ]
    assert got["checkins_by_weekday_hour"][4][21] == 1
    # Saturday 19:00 (2 in 5 weeks) is now the quietest open hour.
    assert got["slow_hours"][:2] == [
        {"weekday": 5, "hour": 19, "checkins": 2, "per_week": 0.4},
        {"weekday": 1, "hour": 14, "checkins": 5, "per_week": 1.0},
    ]


def test_a_range_across_the_clock_change_and_part_weeks(
    tmp_path: Path, any_repo: Repository
) -> None:
    """Ten days (Monday and Tuesday twice): per_week divides by the weekday's days."""
    t = shop_traffic(date(2026, 10, 5), date(2026, 10, 14), midnight=False)
    any_repo.add_events(t.events)
    got = insights(client_for(config_for(tmp_path, opening_hours=OPEN), any_repo),
                   date(2026, 10, 5), date(2026, 10, 14))  # fmt: skip
    assert got["slow_hours"][0] == {"weekday": 1, "hour": 14, "checkins": 2, "per_week": 1.0}
    assert got["checkins_by_weekday_hour"] == expected_grid(
        t, date(2026, 10, 5), date(2026, 10, 14)
    )


def test_lapsed_weeks_is_the_owners_to_choose(tmp_path: Path, any_repo: Repository) -> None:
    any_repo.add_events(shop_traffic().events)
    got = insights(client_for(config_for(tmp_path, lapsed_weeks=12), any_repo))
    assert got["members"]["lapsed"] == 0 and got["lapsed_members"] == []


def test_an_empty_shop_answers_zeros(tmp_path: Path, any_repo: Repository) -> None:
    got = insights(client_for(config_for(tmp_path), any_repo))
    assert got["checkins_by_weekday_hour"] == [[0] * 24] * 7
    assert got["slow_hours"] == [] and got["open_hours"] == []
    assert got["members"] == {"visited": 0, "new": 0, "returning": 0, "lapsed": 0}
    assert got["repeat_visit_rate"] == 0.0 and got["suggestion"] is None
    assert got["pickup_lead_time_min"] == {"count": 0, "median": None, "p90": None}


# -- through the real protocol -------------------------------------------------------


@pytest.fixture
def shanghai_bridge(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, any_repo: Repository
) -> Iterator[BridgeRuntime]:
    raw = {
        "store": STORE,
        "kiosks": ["k1"],
        "timezone": "Asia/Shanghai",
        "opening_hours": OPEN,
        "mqtt": {"url": mosquitto_broker.url, "client_id": f"bridge-{new_event_id()[:8]}"},
    }
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    bridge = BridgeRuntime(config, any_repo, signing_key=KEY)
    bridge.start()
    assert bridge.wait_ready(10), "bridge did not subscribe"
    yield bridge
    bridge.stop()


def test_traffic_sent_by_a_kiosk_over_mqtt_is_what_the_insights_count(
    shanghai_bridge: BridgeRuntime, mosquitto_broker: MosquittoBroker, any_repo: Repository
) -> None:
    first, last = date(2026, 10, 5), date(2026, 10, 18)
    t = shop_traffic(first, last)
    kiosk = Peer(mosquitto_broker, kiosk_topic(STORE, "k1", "acks"))
    try:
        for i in range(0, len(t.events), 100):
            kiosk.publish(kiosk_topic(STORE, "k1", "events"), dumps(t.events[i : i + 100]))
        acked: set[str] = set()
        deadline = time.monotonic() + 30
        while len(acked) < len(t.events):
            assert time.monotonic() < deadline, f"{len(acked)} of {len(t.events)} acked"
            acked.update(kiosk.next(timeout=10)[1]["ids"])
    finally:
        kiosk.close()
    client = TestClient(
        create_app(shanghai_bridge.config, any_repo, token=TOKEN, read_token=READ, signing_key=KEY)
    )
    got = insights(client, first, last)
    assert got["checkins_by_weekday_hour"] == expected_grid(t, first, last)
    assert got["checkins_by_weekday_hour"][0][0] == 1  # Monday 00:30 in Shanghai
    assert got["daily"] == expected_daily(t, first, last)
    assert got["slow_hours"][0] == {"weekday": 1, "hour": 14, "checkins": 2, "per_week": 1.0}
    # Two weeks up to 18 Oct: n2 joined (n1 comes later), l2 (1 Oct) is not yet lapsed,
    # l1 (10 Aug) is.
    assert got["members"] == {"visited": 20, "new": 1, "returning": 20, "lapsed": 1}
    assert got["repeat_visit_rate"] == 1.0
    assert [m["id"] for m in got["lapsed_members"]] == ["l1"]
    assert got["lapsed_members"][0]["visits"] == 2
    assert got["pickup_lead_time_min"] == {"count": 3, "median": 60.0, "p90": 84.0}


def test_a_zone_with_a_quarter_hour_offset(tmp_path: Path, any_repo: Repository) -> None:
    """Kathmandu is UTC+05:45: 18:14 UTC is 23:59 there, 18:15 UTC the next day's 00:00."""
    t = Traffic()
    t.checkin(datetime(2026, 10, 5, 18, 14, tzinfo=UTC), "c00")  # Monday 23:59
    t.checkin(datetime(2026, 10, 5, 18, 15, tzinfo=UTC), "c01")  # Tuesday 00:00
    t.checkin(datetime(2026, 10, 5, 4, 14, tzinfo=UTC), "c02")  # Monday 09:59
    any_repo.add_events(t.events)
    config = config_for(tmp_path, timezone="Asia/Kathmandu")
    got = insights(client_for(config, any_repo), date(2026, 10, 5), date(2026, 10, 6))
    grid = got["checkins_by_weekday_hour"]
    assert (grid[0][23], grid[1][0], grid[0][9]) == (1, 1, 1)
    assert sum(map(sum, grid)) == 3
    assert [d["checkins"] for d in got["daily"]] == [2, 1]


@pytest.mark.parametrize(
    "extra",
    [
        {"opening_hours": [{"days": [8], "from": "08:00", "to": "18:00"}]},
        {"opening_hours": [{"days": [1], "from": "8am", "to": "18:00"}]},
        {"opening_hours": []},
        {"lapsed_weeks": 0},
    ],
)
def test_a_wrong_setting_stops_the_bridge_with_its_name(tmp_path: Path, extra: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        config_for(tmp_path, **extra)
    assert next(iter(extra)) in str(caught.value)


# -- the roll-ups against the rows ---------------------------------------------------


def _when(e: Event) -> datetime:
    return datetime.fromisoformat(e.ts.replace("Z", "+00:00"))


def reference(
    events: list[Event], zone: ZoneInfo, first: date, last: date, lapsed_weeks: int = 4
) -> dict[str, Any]:
    """The figures worked out event by event, as docs/insights.md defines them: what the
    roll-ups must give."""

    def midnight(d: date) -> datetime:
        return datetime.combine(d, datetime.min.time(), tzinfo=zone).astimezone(UTC)

    start, end = midnight(first), midnight(last + timedelta(days=1))
    cutoff = midnight(last + timedelta(days=1) - timedelta(weeks=lapsed_weeks))
    grid = [[0] * 24 for _ in range(7)]
    kinds: Counter[tuple[date, str]] = Counter()
    visits: dict[str, list[datetime]] = {}
    seen: dict[str, datetime] = {}
    for e in events:
        if e.type == "checkin" and not e.data.get("counted", True):
            continue
        at = _when(e)
        local = at.astimezone(zone)
        if start <= at < end:
            kinds[(local.date(), e.type)] += 1
            if e.type == "checkin":
                grid[local.weekday()][local.hour] += 1
        member = e.data.get("member_id")
        if member is None or e.type not in ("checkin", "member.joined") or at >= end:
            continue
        seen[member] = min(seen.get(member, at), at)
        if e.type == "checkin":
            visits.setdefault(member, []).append(at)
    in_range = {m: [t for t in ts if t >= start] for m, ts in visits.items()}
    visited = [m for m, ts in in_range.items() if ts]
    lapsed = sorted(
        ((max(ts), m, len(ts)) for m, ts in visits.items() if max(ts) < cutoff), reverse=True
    )
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    return {
        "checkins_by_weekday_hour": grid,
        "daily": [
            {
                "date": d.isoformat(),
                "checkins": kinds[(d, "checkin")],
                "redemptions": kinds[(d, "coupon.redeemed")],
                "pickups": kinds[(d, "pickup.completed")],
                "joins": kinds[(d, "member.joined")],
            }
            for d in days
        ],
        "members": {
            "visited": len(visited),
            "new": sum(1 for t in seen.values() if start <= t < end),
            "returning": sum(1 for m in visited if min(visits[m]) < start),
            "lapsed": len(lapsed),
        },
        "repeat_visit_rate": (
            round(sum(1 for m in visited if len(in_range[m]) >= 2) / len(visited), 4)
            if visited
            else 0.0
        ),
        "lapsed_members": [
            (m, at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", n) for at, m, n in lapsed
        ],
    }


def mixed_traffic(zone: ZoneInfo, first: date, last: date, seed: int) -> list[Event]:
    """Weeks of visits at any hour (midnight too), before, in and after the range, in
    `zone`: regulars, newcomers who join, second scans that do not count, two visits in
    one quarter-hour, and the hour a clock change repeats or skips."""
    rng = random.Random(seed)
    t = Traffic()

    def at(d: date, hour: int, minute: int, second: int = 0, fold: int = 0) -> datetime:
        return datetime(d.year, d.month, d.day, hour, minute, second, tzinfo=zone, fold=fold)

    day, joined = first - timedelta(days=40), 0
    while day <= last + timedelta(days=9):
        for _ in range(rng.randint(0, 14)):
            when = at(day, rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59))
            member = f"m{int(30 * rng.random() ** 2):02d}"
            if rng.random() < 0.1:
                joined += 1
                member = f"n{joined:03d}"
                t.add("member.joined", when - timedelta(minutes=1), member_id=member)
            t.checkin(when, member, counted=rng.random() > 0.05)
            if rng.random() < 0.05:
                t.checkin(when + timedelta(minutes=rng.randint(0, 3)), member)
            if rng.random() < 0.05:
                t.add("coupon.redeemed", when, coupon_id=f"c{rng.random()}")
            if rng.random() < 0.03:
                t.add("pickup.completed", when, order=f"o{rng.random()}", locker="L1")
        day += timedelta(days=1)
    for d in (first, last, last + timedelta(days=1)):  # on the range's edges
        t.checkin(at(d, 0, 0), "edge")
        t.checkin(at(d - timedelta(days=1), 23, 59, 59), "edge")
    sunday = date(2026, 10, 25)  # Europe's clocks go back: 02:30 happens twice
    t.checkin(at(sunday, 2, 30), "dst", counted=True)
    t.checkin(at(sunday, 2, 30, fold=1), "dst", counted=True)
    t.checkin(datetime(2026, 9, 1, 10, 0, tzinfo=zone), "gone")  # lapsed long ago
    return t.events


@pytest.mark.parametrize("zone_name", ["Asia/Kathmandu", "Europe/Berlin"])
def test_the_roll_ups_give_the_figures_the_events_give(
    zone_name: str, tmp_path: Path, mosquitto_broker: MosquittoBroker, any_repo: Repository
) -> None:
    """Traffic sent by a kiosk over MQTT, some of it twice, one event quarantined: the
    insights (from the roll-ups) equal the figures worked out from the events sent, in a
    +05:45 zone and across a clock change, for a range and for a past range that later
    visits must not change."""
    zone = ZoneInfo(zone_name)
    first, last = date(2026, 10, 19), date(2026, 11, 1)  # Berlin changes on 25 October
    sent = mixed_traffic(zone, first, last, seed=len(zone_name))
    bad = Event(
        id=new_event_id(),
        seq=len(sent) + 1,
        type="checkin",
        ts=rfc3339(datetime(2026, 10, 20, 12, 0, tzinfo=zone).timestamp()),
        store=STORE,
        kiosk="k1",
        data={"member_id": "m01", "name": "bad\u0000name"},
    )
    raw = {
        "store": STORE,
        "kiosks": ["k1"],
        "timezone": zone_name,
        "mqtt": {"url": mosquitto_broker.url, "client_id": f"bridge-{new_event_id()[:8]}"},
    }
    config = validate_config(tmp_path / "bridge.toml", raw, BridgeConfig)
    bridge = BridgeRuntime(config, any_repo, signing_key=KEY)
    bridge.start()
    kiosk = Peer(mosquitto_broker, kiosk_topic(STORE, "k1", "acks"))
    try:
        assert bridge.wait_ready(10), "bridge did not subscribe"
        # Everything once, then the first 300 again (a kiosk re-sending what it had not
        # seen acked): each id is counted once.
        messages = [sent[i : i + 100] for i in range(0, len(sent), 100)] + [[bad]]
        messages += [sent[i : i + 100] for i in range(0, 300, 100)]
        for batch in messages:
            kiosk.publish(kiosk_topic(STORE, "k1", "events"), dumps(batch))
        # Each id acked (the re-sent ones again: the wait is for the second ack).
        want = Counter(e.id for batch in messages for e in batch)
        acked: Counter[str] = Counter()
        deadline = time.monotonic() + 120
        while acked != want:
            left = deadline - time.monotonic()
            assert left > 0, f"{sum(acked.values())} of {want.total()} acked"
            with contextlib.suppress(queue.Empty):
                acked.update(kiosk.next(timeout=left)[1]["ids"])
    finally:
        kiosk.close()
        bridge.stop()
    assert any_repo.count_rejected(STORE) == 1  # the NUL: quarantined, never counted
    client = client_for(config, any_repo)
    for a, b in ((first, last), (first - timedelta(days=20), first + timedelta(days=3))):
        got = insights(client, a, b)
        want = reference(sent, zone, a, b)
        for key in ("checkins_by_weekday_hour", "daily", "members", "repeat_visit_rate"):
            assert got[key] == want[key], (key, a, b)
        assert [(m["id"], m["last_visit"], m["visits"]) for m in got["lapsed_members"]] == want[
            "lapsed_members"
        ]
    assert got["members"]["visited"] > 10 and got["members"]["lapsed"] >= 1


def test_a_kiosk_clock_years_ahead_counts_on_the_day_it_arrived(
    tmp_path: Path, any_repo: Repository
) -> None:
    """A check-in dated 2029 that reached the bridge on 20 October 2026 counts on 20
    October in the insights, as in that day's figures, and not in 2029."""
    arrived = datetime(2026, 10, 20, 3, 0, tzinfo=UTC)  # 11:00 in Shanghai
    t = Traffic()
    t.checkin(datetime(2026, 10, 19, 10, 0), "c00")  # an ordinary visit the day before
    t.checkin(datetime(2029, 5, 1, 10, 0), "c00")  # the kiosk's clock is years ahead
    t.add("member.joined", datetime(2029, 5, 1, 9, 0), member_id="n9")
    any_repo.add_events(t.events[:1], now=datetime(2026, 10, 19, 2, 0, 5, tzinfo=UTC))
    any_repo.add_events(t.events[1:], now=arrived)
    client = client_for(config_for(tmp_path), any_repo)

    got = insights(client, date(2026, 10, 19), date(2026, 10, 20))
    assert [d["checkins"] for d in got["daily"]] == [1, 1]
    assert [d["joins"] for d in got["daily"]] == [0, 1]
    assert got["checkins_by_weekday_hour"][1][11] == 1  # Tuesday 11:00, when it arrived
    assert got["members"] == {"visited": 1, "new": 2, "returning": 0, "lapsed": 0}
    assert got["repeat_visit_rate"] == 1.0  # c00 came on both days
    today = any_repo.today_stats(STORE, now=arrived, zone=SHANGHAI)
    assert (today["day"], today["checkins"], today["joins"]) == ("2026-10-20", 1, 1)
    assert got["daily"][1]["checkins"] == today["checkins"]

    later = insights(client, date(2029, 4, 20), date(2029, 5, 10))
    assert sum(d["checkins"] for d in later["daily"]) == 0
    assert later["members"]["visited"] == 0


def test_writers_at_once_lose_no_count(tmp_path: Path, any_repo: Repository) -> None:
    """Four threads store overlapping batches of the same visits at once (workers of one
    shop, a kiosk re-sending): every visit is counted, once."""
    t = Traffic()
    for i in range(400):
        t.checkin(datetime(2026, 10, 5, 8, 0) + timedelta(minutes=i), f"c{i % 7:02d}")
    done: list[BaseException] = []

    def store(offset: int) -> None:
        try:
            for k in range(0, 400, 50):
                any_repo.add_events(t.events[(k + offset) % 400 :][:80])
        except BaseException as exc:
            done.append(exc)

    threads = [threading.Thread(target=store, args=(o,)) for o in (0, 30, 60, 90)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not done, done
    assert any_repo.count_events() == 400
    got = insights(client_for(config_for(tmp_path), any_repo), FIRST, FIRST)
    assert got["daily"][0]["checkins"] == 400
    assert got["members"] == {"visited": 7, "new": 7, "returning": 0, "lapsed": 0}
    assert got["repeat_visit_rate"] == 1.0


def test_a_long_range_reads_the_same_ratings_and_pickups(
    tmp_path: Path, any_repo: Repository
) -> None:
    """Over months the ratings and pickups are read another way on SQLite (by type):
    the same figures as over the four weeks that hold them."""
    any_repo.add_events(shop_traffic().events)
    client = client_for(config_for(tmp_path), any_repo)
    short = insights(client)
    long = insights(client, FIRST - timedelta(days=70), LAST)
    assert long["ratings"] == short["ratings"] and short["ratings"]["count"] == 2
    assert long["pickup_lead_time_min"] == short["pickup_lead_time_min"]
    assert short["pickup_lead_time_min"] == {"count": 3, "median": 60.0, "p90": 84.0}
