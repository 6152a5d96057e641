"""Insights benchmark: `GET /api/v1/insights` over a year of a busy shop.

The issue's target: the owner's figures for a whole year (about 200k events) answered in
at most 1 s, on SQLite and on PostgreSQL. A year of a busy shop in Shanghai (open Tuesday
to Sunday 08:00-21:00, lunch and evening peaks, busier weekends, growing a little) is
written straight into the bridge's database with `Repository.add_events` in big batches:
member check-ins (a few not counted: a second visit the same day), joins, coupon
redemptions of ten campaigns whose codes were issued, reservations, locker loads and
pickups, ratings, refused scans, and preorders queued for the lockers. Then the whole
answer is asked for through the FastAPI app (TestClient: routing, auth, JSON), once cold
and a few times warm.

Beside it, in the same run on the same database: the baseline, the two full reads of the
year's events the answer was made of before the roll-ups (cloud_bridge/db/rollup.py):
check-ins, redemptions, arrivals, pickups and joins grouped by type and UTC hour, and the
members grouped by member id. Their figures must equal the answer's (the bench stops if
not). Also a plain `SELECT count(*)` of the year's events (reading it at the least), the
forecast alone (cloud_bridge/forecast.py) on the year's hourly check-ins, and what
storing the year cost (`add_events` in batches of 10,000, roll-ups included).

On PostgreSQL the tables are ANALYZEd after the load, as autovacuum would have done.
`python -m bench.bench_insights --profile` also shows where an answer's time goes.

PostgreSQL: `O2O_TEST_PG_URL` or the server on 127.0.0.1:5432, in a throwaway database
dropped at the end; skipped (and said so) when there is neither.
"""

from __future__ import annotations

import contextlib
import cProfile
import math
import os
import pstats
import random
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import and_, case, func, or_, select, type_coerce

from cloud_bridge.activities import ActivityService
from cloud_bridge.api import create_app
from cloud_bridge.campaigns import CampaignService
from cloud_bridge.commands import CommandService
from cloud_bridge.config import BridgeConfig
from cloud_bridge.db import Repository
from cloud_bridge.db.tables import EventRow, UTCDateTime
from cloud_bridge.forecast import forecast
from cloud_bridge.insights import InsightsService
from o2o_protocol.config_file import validate_config
from o2o_protocol.messages import Event, new_event_id
from o2o_protocol.timeutil import rfc3339

STORE = "bench"
ZONE = "Asia/Shanghai"
TOKEN = "bench-token-0123456789abcdef"
TARGET_S = 1.0
#: Counted check-ins on an average open day; with the rest, ~200k events a year.
CHECKINS_PER_DAY = 360
#: Members before the year began (no join in it), and the new ones the year brings.
MEMBERS_BEFORE = 2000
JOINS_PER_DAY = 20
CAMPAIGNS = 10
CODES_PER_CAMPAIGN = 1000
PREORDERS = 1000
WARM_RUNS = 5
#: Events per `add_events` call.
BATCH = 10_000
#: Tuesday to Sunday; a weekday's traffic relative to the others.
WEEKDAY = (0.0, 0.8, 0.9, 1.0, 1.2, 1.4, 1.3)
#: 08:00 to 20:00 (the hour starting then): the share of a day's visitors.
HOURS = dict(enumerate((4, 6, 7, 10, 13, 11, 6, 6, 7, 9, 10, 7, 4), start=8))


def _poisson(rng: random.Random, lam: float) -> int:
    """Arrivals in an hour when `lam` come on average (normal beyond 30: same shape)."""
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class Shop:
    """A year of one busy shop's events, in time order, as its two doors would send them."""

    def __init__(self, first: date, last: date, scale: float, seed: int = 12) -> None:
        self.rng = random.Random(seed)
        self.zone = ZoneInfo(ZONE)
        self.first, self.last, self.scale = first, last, scale
        self.seq = {"door1": 0, "door2": 0}
        self.members = int(MEMBERS_BEFORE * scale)
        self.orders = 0
        self.hourly: list[tuple[date, int, int]] = []  # counted check-ins, shop time
        self.campaigns: list[str] = []

    def _event(self, type_: str, at: datetime, data: dict[str, Any]) -> Event:
        kiosk = "door1" if self.rng.random() < 0.7 else "door2"
        self.seq[kiosk] += 1
        return Event.model_construct(
            id=new_event_id(),
            seq=self.seq[kiosk],
            type=type_,
            ts=rfc3339(at.timestamp()),
            store=STORE,
            kiosk=kiosk,
            data=data,
        )

    def _member(self) -> str:
        """Regulars come most: the earliest members are picked far more often."""
        return f"m{int(self.members * self.rng.random() ** 2):06d}"

    def days(self) -> Iterator[list[Event]]:
        """Each day's events (none on a closed day), in time order."""
        total_share = sum(HOURS.values())
        days = (self.last - self.first).days + 1
        for n in range(days):
            day = self.first + timedelta(days=n)
            growth = 0.85 + 0.3 * n / days
            factor = WEEKDAY[day.weekday()] * growth * self.scale
            events: list[tuple[datetime, Event]] = []
            for hour in range(24):
                share = HOURS.get(hour, 0) / total_share
                visits = _poisson(self.rng, CHECKINS_PER_DAY * factor * share) if share else 0
                self.hourly.append((day, hour, visits))
                start = datetime(day.year, day.month, day.day, hour, tzinfo=self.zone)
                for _ in range(visits):
                    events += self._visit(start + timedelta(seconds=self.rng.uniform(0, 3599)))
            for _ in range(_poisson(self.rng, 33 * factor)):
                events += self._pickup(day)
            events.sort(key=lambda pair: pair[0])
            yield [e for _, e in events]

    def _visit(self, at: datetime) -> list[tuple[datetime, Event]]:
        rng = self.rng
        out = []
        if rng.random() < JOINS_PER_DAY / CHECKINS_PER_DAY:
            self.members += 1
            member = f"m{self.members - 1:06d}"
            joined = {"member_id": member, "phone_hash": uuid.uuid4().hex, "known": False}
            out.append((at - timedelta(seconds=30), self._event("member.joined", at, joined)))
        else:
            member = self._member()
        visit = {"member_id": member, "name": "会员", "visits": 3, "points": 30, "counted": True}
        out.append((at, self._event("checkin", at, visit)))
        later = at + timedelta(minutes=rng.uniform(1, 30))
        if rng.random() < 0.03:  # the same member again the same day: not counted
            again = {**visit, "counted": False}
            out.append((later, self._event("checkin", later, again)))
        if rng.random() < 0.07 and self.campaigns:
            campaign = rng.choice(self.campaigns)
            coupon = {"coupon_id": uuid.uuid4().hex[:16], "campaign": campaign, "value": "¥10"}
            out.append((later, self._event("coupon.redeemed", later, coupon)))
        if rng.random() < 0.04:
            arrived = {"reservation_id": uuid.uuid4().hex[:12], "timing": "on_time", "name": "客"}
            out.append((at, self._event("reservation.arrived", at, arrived)))
        if rng.random() < 0.13:
            rating = {"rating": rng.choice((3, 4, 4, 5, 5, 5)), "subject": "checkin"}
            out.append((later, self._event("review.submitted", later, rating)))
        if rng.random() < 0.012:
            refused = {"reason": "expired", "detail": "code expired"}
            out.append((at, self._event("scan.rejected", at, refused)))
        return out

    def _pickup(self, day: date) -> list[tuple[datetime, Event]]:
        self.orders += 1
        order, locker = f"o{self.orders:07d}", f"L{self.orders % 12 + 1}"
        loaded = datetime(day.year, day.month, day.day, 9, tzinfo=self.zone) + timedelta(
            minutes=self.rng.uniform(0, 600)
        )
        picked = loaded + timedelta(minutes=self.rng.lognormvariate(4, 0.8))
        return [
            (loaded, self._event("locker.loaded", loaded, {"order": order, "locker": locker})),
            (picked, self._event("pickup.opened", picked, {"order": order, "locker": locker})),
            (picked, self._event("pickup.completed", picked, {"order": order, "locker": locker})),
        ]


def _fill(repo: Repository, config: BridgeConfig, key: Ed25519PrivateKey, shop: Shop) -> int:
    """The shop's campaigns and codes, its year of events, its preorders; events stored."""
    campaigns = CampaignService(repo, config, key)
    for i in range(CAMPAIGNS):
        c = campaigns.create(name=f"活动 {i + 1}", kind="coupon", value="¥10")
        campaigns.issue(c.id, max(1, int(CODES_PER_CAMPAIGN * shop.scale)))
        shop.campaigns.append(c.id)
    stored = 0
    batch: list[Event] = []
    for day in shop.days():
        batch += day
        if len(batch) >= BATCH:
            stored += _store(repo, batch)
            batch = []
    stored += _store(repo, batch)
    for i in range(max(1, int(PREORDERS * shop.scale))):
        items = [{"name": shop.rng.choice(("拿铁", "美式", "可颂", "贝果")), "qty": 1 + i % 3}]
        repo.add_command(STORE, "door1", "preorder.upsert", {"order": f"p{i}", "items": items})
    return stored


def _store(repo: Repository, batch: list[Event]) -> int:
    if not batch:
        return 0
    # Received a few seconds after the last of them, as a kiosk that syncs would send it.
    received = datetime.fromisoformat(batch[-1].ts.replace("Z", "+00:00")) + timedelta(seconds=5)
    return len(repo.add_events(batch, now=received))


def _median_s(fn: Any, runs: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(
    url: str, label: str, shop: Shop, config: BridgeConfig, *, profile: bool = False
) -> dict[str, Any]:
    """Fill one database with the year, then time the answer, the baseline and the forecast;
    with `profile`, one more answer under cProfile (its bridge functions, costliest first)."""
    repo = Repository.from_url(url)
    try:
        repo.migrate()
        key = Ed25519PrivateKey.generate()
        t0 = time.perf_counter()
        stored = _fill(repo, config, key, shop)
        fill_s = time.perf_counter() - t0
        if repo.engine.dialect.name == "postgresql":
            # The planner's statistics, as autovacuum gathers them within a minute of a
            # bulk load on a live server; without them PostgreSQL plans the year's joins
            # for empty tables (a campaign's redemptions: a minute instead of 10 ms).
            with repo.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
                conn.commit()
        client = TestClient(create_app(config, repo, token=TOKEN, signing_key=key))
        query = {"from": shop.first.isoformat(), "to": shop.last.isoformat()}
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def ask() -> dict[str, Any]:
            r = client.get("/api/v1/insights", params=query, headers=headers)
            r.raise_for_status()
            answer: dict[str, Any] = r.json()
            return answer

        t0 = time.perf_counter()
        answer = ask()
        cold_s = time.perf_counter() - t0
        warm_s, answer = _median_s(ask, WARM_RUNS)
        if profile:
            # The route runs in a worker thread, out of cProfile's sight: the service itself.
            service = InsightsService(
                repo,
                config,
                CampaignService(repo, config, key),
                ActivityService(repo, config, key, CommandService(repo, STORE)),
            )
            _profile(label, lambda: service.insights(query["from"], query["to"]))
        zone = ZoneInfo(ZONE)
        start = datetime.combine(shop.first, datetime.min.time(), zone).astimezone(UTC)
        end = datetime.combine(shop.last + timedelta(days=1), datetime.min.time(), zone)
        count = (
            select(func.count())
            .select_from(EventRow)
            .where(EventRow.store == STORE, EventRow.ts >= start, EventRow.ts < end)
        )

        def baseline() -> int:
            with repo.engine.connect() as conn:
                return int(conn.scalar(count) or 0)

        base_s, counted = _median_s(baseline, WARM_RUNS)
        scan_cold_s, _ = _median_s(lambda: full_scan(repo, start, end, answer), 1)
        scan_s, _ = _median_s(lambda: full_scan(repo, start, end, answer), WARM_RUNS)
        forecast_s, _ = _median_s(lambda: forecast(shop.hourly), WARM_RUNS)
        return {
            "database": label,
            "events": counted,
            "stored": stored,
            "fill_s": fill_s,
            "ingest_per_s": stored / fill_s,
            "cold_s": cold_s,
            "warm_s": warm_s,
            "count_s": base_s,
            "scan_cold_s": scan_cold_s,
            "scan_s": scan_s,
            "ratio": warm_s / scan_s if scan_s else None,
            "forecast_s": forecast_s,
            "checkins": sum(sum(row) for row in answer["checkins_by_weekday_hour"]),
            "backtest": answer["backtest"],
            "suggestion": answer["suggestion"] and answer["suggestion"]["text"]["en"],
        }
    finally:
        repo.close()


def full_scan(
    repo: Repository, start: datetime, end: datetime, answer: dict[str, Any]
) -> tuple[int, int]:
    """The two reads of every event of the year that the answer was made of before the
    roll-ups (the baseline), checked against the answer: the check-ins per weekday and
    hour (grouped by type and UTC hour, moved into shop time here) and the members
    (grouped by member id). Returns the rows each read gave back."""
    zone = ZoneInfo(ZONE)
    dialect = repo.engine.dialect.name
    checkin = EventRow.type == "checkin"
    if dialect == "sqlite":
        hour: Any = func.substr(EventRow.ts, 1, 13)
        kind = func.json_type(EventRow.data, "$.counted")
        counted = or_(kind.is_(None), kind == "true")
    else:
        hour = func.date_trunc("hour", func.timezone("UTC", EventRow.ts))
        counted = or_(
            EventRow.data["counted"].is_(None), EventRow.data["counted"].as_string() == "true"
        )
    types = ("checkin", "coupon.redeemed", "reservation.arrived", "pickup.completed")
    by_hour = (
        select(EventRow.type, hour, func.count())
        .where(
            EventRow.store == STORE,
            EventRow.ts >= start,
            EventRow.ts < end,
            EventRow.type.in_((*types, "member.joined")),
            or_(~checkin, counted),
        )
        .group_by(EventRow.type, hour)
    )
    member = EventRow.data["member_id"].as_string()
    visit = type_coerce(case((checkin, EventRow.ts), else_=None), UTCDateTime)
    last_day = date.fromisoformat(answer["to"])
    cutoff = datetime.combine(
        last_day + timedelta(days=1) - timedelta(weeks=4), datetime.min.time(), zone
    )
    by_member = (
        select(
            member,
            case((func.min(EventRow.ts) >= start, 1), else_=0),
            case((func.min(visit) < start, 1), else_=0),
            case((func.max(visit) < cutoff, 1), else_=0),
            func.sum(case((checkin, 1), else_=0)),
            func.sum(case((and_(checkin, EventRow.ts >= start), 1), else_=0)),
        )
        .where(
            EventRow.store == STORE,
            EventRow.ts < end,
            EventRow.type.in_(("checkin", "member.joined")),
            or_(~checkin, counted),
        )
        .group_by(member)
    )
    grid = [[0] * 24 for _ in range(7)]
    members = dict.fromkeys(("visited", "new", "returning", "lapsed"), 0)
    first_day = date.fromisoformat(answer["from"])
    with repo.engine.connect() as conn:
        hours = conn.execute(by_hour).all()
        people = conn.execute(by_member).all()
    for type_, h, n in hours:
        at = h if isinstance(h, datetime) else datetime.strptime(h, "%Y-%m-%d %H")
        local = at.replace(tzinfo=UTC).astimezone(zone)
        if type_ == "checkin" and first_day <= local.date() <= last_day:
            grid[local.weekday()][local.hour] += n
    for m, new, before, gone, visits, in_range in people:
        if m is None:
            continue
        members["new"] += new
        members["visited"] += in_range > 0
        members["returning"] += in_range > 0 and before
        members["lapsed"] += visits > 0 and gone
    if grid != answer["checkins_by_weekday_hour"] or members != answer["members"]:
        raise AssertionError(f"the roll-ups' figures differ from the events': {members}")
    return len(hours), len(people)


def _profile(label: str, ask: Any, top: int = 12) -> None:
    """Where one answer's time goes: the bridge's own functions by cumulative time."""
    profiler = cProfile.Profile()
    profiler.runcall(ask)
    stats = pstats.Stats(profiler)
    mine = [
        (cum, n, f"{Path(file).name}:{line}({name})")
        for (file, line, name), (_, n, _, cum, _) in stats.stats.items()  # type: ignore[attr-defined]
        if "cloud_bridge" in file
    ]
    print(f"  {label}, one answer under cProfile (cumulative s, calls, function):")
    for cum, n, where in sorted(mine, reverse=True)[:top]:
        print(f"    {cum:7.3f} {n:>6} {where}")


@contextlib.contextmanager
def _postgres() -> Iterator[str | None]:
    """A throwaway database on `O2O_TEST_PG_URL` or 127.0.0.1:5432; None without either."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = os.environ.get("O2O_TEST_PG_URL")
    if not server:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), 1):
            server = "postgresql://postgres@127.0.0.1:5432/postgres"
    if not server:
        yield None
        return
    admin = make_url(server).set(drivername="postgresql")
    dsn = admin.render_as_string(hide_password=False)
    name = f"o2o_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"  (PostgreSQL at {admin.host}:{admin.port}: {exc}; skipped)")
        yield None
        return
    try:
        yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with (
            contextlib.suppress(Exception),
            psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(quick: bool = False, profile: bool = False) -> dict[str, Any]:
    scale = 0.1 if quick else 1.0
    last = datetime.now(ZoneInfo(ZONE)).date() - timedelta(days=1)
    first = last - timedelta(days=364)
    rows = []
    with tempfile.TemporaryDirectory(prefix="o2o-insights-") as tmp:
        config = validate_config(
            Path(tmp) / "bridge.toml", {"store": STORE, "timezone": ZONE}, BridgeConfig
        )
        sqlite_url = f"sqlite:///{tmp}/bridge.db"
        shop = Shop(first, last, scale)
        rows.append(measure(sqlite_url, "SQLite", shop, config, profile=profile))
        with _postgres() as pg:
            if pg is None:
                rows.append({"database": "PostgreSQL", "skipped": "no server reachable"})
            else:
                shop = Shop(first, last, scale)
                rows.append(measure(pg, "PostgreSQL", shop, config, profile=profile))
    return {"from": first.isoformat(), "to": last.isoformat(), "target_s": TARGET_S, "rows": rows}


def print_table(r: dict[str, Any]) -> None:
    print(f"Insights: GET /api/v1/insights for a year of a busy shop ({r['from']} to {r['to']})")
    print(
        f"{'database':>11} {'events':>8} {'cold':>8} {'warm med':>9} {'old scans':>10} "
        f"{'ratio':>6} {'count(*)':>9} {'forecast':>9} {'stored/s':>9}  "
        f"target <= {r['target_s']:g} s"
    )
    for row in r["rows"]:
        if "skipped" in row:
            print(f"{row['database']:>11}  skipped: {row['skipped']}")
            continue
        verdict = "OK" if max(row["cold_s"], row["warm_s"]) <= r["target_s"] else "MISSED"
        print(
            f"{row['database']:>11} {row['events']:>8,} {row['cold_s']:>7.3f}s "
            f"{row['warm_s']:>8.3f}s {row['scan_s']:>9.3f}s {row['ratio']:>6.2f} "
            f"{row['count_s'] * 1000:>7.1f}ms {row['forecast_s'] * 1000:>7.1f}ms "
            f"{row['ingest_per_s']:>9,.0f}  {verdict}"
        )
    done = [row for row in r["rows"] if "skipped" not in row]
    if done:
        row = done[0]
        bt = row["backtest"]
        filled = ", ".join(f"{x['fill_s']:.0f}s" for x in done)
        print(
            f"  (filled in {filled}; old scans = the two full reads of the year's events "
            "the answer was made of before the roll-ups, warm, with the same figures; "
            "ratio = warm answer / old scans; forecast = forecast.py alone; stored/s = "
            "events stored a second while filling, roll-ups included)"
        )
        if bt["mae"] is not None:
            print(
                f"  backtest on the last {bt['weeks']} weeks: mean daily error "
                f"{bt['mae']:.1f} check-ins, seasonal naive {bt['seasonal_naive_mae']:.1f}"
            )
        print(f"  suggestion: {row['suggestion']}")


if __name__ == "__main__":
    # --profile: also where an answer's time goes (an extra run, not in the figures).
    result = run(quick="--quick" in sys.argv, profile="--profile" in sys.argv)
    print_table(result)
