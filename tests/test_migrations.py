"""A shop that ran release 0.1 upgrades and keeps everything (docs/upgrading.md).

Each test builds release 0.1's database exactly as 0.1 did (tests/release_0_1.py, its own
frozen copy of the tables) on SQLite and on PostgreSQL, lets the bridge upgrade it, and
checks what a shop owner would notice: every event, kiosk, command and quarantined event
is still there, members come with the points their check-ins earned, the result is the
schema a new shop gets, and the bridge carries on working on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import make_url

from cloud_bridge.commands import CommandService
from cloud_bridge.config import MembersSection, load_config
from cloud_bridge.db import Repository, rollup
from cloud_bridge.db.migrate import head
from cloud_bridge.db.tables import (
    Base,
    EventCountRow,
    EventRow,
    MemberActivityRow,
    MemberVisitRow,
)
from cloud_bridge.leases import Lease, beat, live_workers, store_lease
from cloud_bridge.members import MemberService
from o2o_protocol.messages import Event
from o2o_protocol.timeutil import rfc3339
from tests import release_0_1 as old
from tests.release_0_1 import COUNTED, MEMBERS, STORE, event_id, make_release_0_1


@pytest.fixture(params=["sqlite", "postgresql"])
def old_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own holding release 0.1's tables and data."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bridge.db'}"
        make_release_0_1(url)
        yield url
        return
    server = make_url(request.getfixturevalue("pg_url"))
    admin = server.set(drivername="postgresql", database="postgres")
    dsn = admin.render_as_string(hide_password=False)
    name = f"o2o_migrate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        make_release_0_1(url)
        yield url
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of release 0.1's tables, in key order, as 0.1's own tables read them."""
    tables = {
        "events": (old.EventRow, old.EventRow.id),
        "kiosks": (old.KioskRow, old.KioskRow.kiosk),
        "commands": (old.CommandRow, old.CommandRow.kiosk, old.CommandRow.seq),
        "rejected_events": (old.RejectedEventRow, old.RejectedEventRow.id),
    }
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name, (row, *order) in tables.items():
            table = row.__table__
            rows = conn.execute(select(table).order_by(*order)).all()
            out[name] = [tuple(r) for r in rows]
    return out


def service(repo: Repository, store: str = STORE) -> MemberService:
    return MemberService(
        repo, store, CommandService(repo, store), ["k1", "k2"], settings=MembersSection()
    )


def test_a_0_1_database_upgrades_with_every_row_and_its_members(old_url: str) -> None:
    engine = create_engine(old_url)
    before = snapshot(engine)
    assert len(before["events"]) == len(old.EVENTS)

    repo = Repository.from_url(old_url)
    try:
        repo.migrate()
        assert snapshot(engine) == before  # same events, kiosks, commands, quarantine

        for (store, member_id), want in MEMBERS.items():
            got = service(repo, store).get(member_id)
            assert got is not None, member_id
            assert (got.points, got.visits, got.last_visit, got.joined_at) == (
                want.points,
                want.visits,
                want.last_visit,
                want.joined_at,
            ), member_id
            assert (got.source, got.name, got.overdrawn) == (want.source, want.name, False)
        # Ada: one entry per counted visit (not the one within the cool-down), each
        # naming its event, newest first, dated when it happened.
        entries = service(repo).ledger("ada")
        assert [e.ref for e in entries] == [f"event:{event_id(n)}" for n in (8, 3, 1)]
        assert [(e.delta, e.reason, e.source) for e in entries] == [
            (10, "checkin", "kiosk:k1"),
            (10, "checkin", "kiosk:k2"),
            (10, "checkin", "kiosk:k1"),
        ]
        assert [e.at for e in entries] == [old.EVENTS[n - 1]["ts"] for n in (8, 3, 1)]
        with engine.connect() as conn:
            entries_total = conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar()
            members_total = conn.execute(text("SELECT count(*) FROM members")).scalar()
        assert (entries_total, members_total) == (len(COUNTED), len(MEMBERS))
        # Each kiosk hears which of its own events the balance already counts.
        assert service(repo).book.applied("ada", "k1") == [event_id(8), event_id(1)]
        assert service(repo).book.applied("ada", "k2") == [event_id(3)]
    finally:
        repo.close()
        engine.dispose()


def test_the_upgraded_schema_is_the_one_a_new_shop_gets(old_url: str) -> None:
    repo = Repository.from_url(old_url)
    try:
        repo.migrate()
        with repo.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert context.get_current_revision() == head()
    finally:
        repo.close()


def test_the_bridge_works_on_an_upgraded_database(old_url: str) -> None:
    repo = Repository.from_url(old_url)
    try:
        repo.migrate()
        members = service(repo)
        visit = Event(
            id=str(uuid.uuid4()),
            seq=12,
            type="checkin",
            ts=rfc3339(old.START.timestamp() + 20 * 86400),
            store=STORE,
            kiosk="k2",
            data={"member_id": "ada", "name": "Ada L.", "points_earned": 10, "counted": True},
        )
        new = repo.add_events([visit])
        members.after_stored([visit], set(new))
        ada = members.get("ada")
        assert ada is not None and (ada.points, ada.visits) == (40, 4)
        assert ada.last_visit is not None and rfc3339(ada.last_visit.timestamp()) == visit.ts
        # A 0.1 check-in counted by the upgrade, seen again, is not counted twice.
        again = Event.model_validate(
            {**repo.events(store=STORE, type="checkin", oldest_first=True)[0].envelope()}
        )
        assert again.id == event_id(1)
        members.after_stored([again], {again.id})
        ada = members.get("ada")
        assert ada is not None and ada.points == 40
        # The online side spends; the stats see the upgraded tables.
        assert members.change_points("ada", -40, "gift card").points == 0
        assert repo.today_stats(STORE)["overdrawn_members"] == 0
        ours = [e for e in old.EVENTS if e["store"] == STORE]  # s2's are not here
        assert len(repo.events(store=STORE, limit=None)) == len(ours) + 1  # and the visit
    finally:
        repo.close()


def test_workers_share_an_upgraded_database(old_url: str) -> None:
    """0005: the leases and heartbeats of several workers (docs/chain.md) work on a
    database upgraded from 0.1: one worker holds a store's lease, the other does not."""
    repo = Repository.from_url(old_url)
    try:
        repo.migrate()
        first, second = (Lease(repo.engine, store_lease(STORE), w) for w in ("w1", "w2"))
        assert first.acquire() is True
        assert second.acquire() is False
        beat(repo.engine, STORE, "w2", {"waiting": 0, "oldest_s": None, "stored": 3})
        assert live_workers(repo.engine, STORE)["w2"]["stored"] == 3
    finally:
        repo.close()


def test_migrating_twice_changes_nothing(old_url: str) -> None:
    repo = Repository.from_url(old_url)
    try:
        repo.migrate()
        engine = repo.engine

        def counts() -> dict[str, int]:
            with engine.connect() as conn:
                return {
                    t: int(conn.execute(select(func.count()).select_from(text(t))).scalar() or 0)
                    for t in ("events", "members", "ledger_entries", "commands", "kiosks")
                }

        first = counts()
        first_snapshot = snapshot(engine)
        repo.migrate()
        assert counts() == first
        assert snapshot(engine) == first_snapshot
        ada = service(repo).get("ada")
        assert ada is not None and ada.points == 30
    finally:
        repo.close()


def test_an_upgrade_cut_short_leaves_the_0_1_database_and_runs_again(old_url: str) -> None:
    """A full disk (or a power cut) while the members are carried over: nothing of the
    upgrade is kept, the shop's data is as it was, and the next start upgrades it."""
    engine = create_engine(old_url)
    before = snapshot(engine)

    def disk_full(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO LEDGER_ENTRIES"):
            raise OSError(28, "No space left on device")

    repo = Repository.from_url(old_url)
    try:
        event.listen(Engine, "before_cursor_execute", disk_full)
        try:
            with pytest.raises(OSError):
                repo.migrate()
        finally:
            event.remove(Engine, "before_cursor_execute", disk_full)
        tables = set(inspect(engine).get_table_names())
        assert tables == {"events", "kiosks", "commands", "rejected_events"}
        assert snapshot(engine) == before

        repo.migrate()
        assert snapshot(engine) == before
        ada = service(repo).get("ada")
        assert ada is not None and ada.points == 30
    finally:
        repo.close()
        engine.dispose()


def test_export_prints_the_old_events_of_an_upgraded_sqlite_database(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    shop = tmp_path / "shop"
    subprocess.run(
        [str(bin_dir / "o2o-bridge"), "init", "--dir", str(shop), "--store", STORE],
        check=True,
        capture_output=True,
        timeout=60,
    )
    url = load_config(shop / "bridge.toml").db.url
    make_release_0_1(url)
    Repository.from_url(url).migrate()
    done = subprocess.run(
        [str(bin_dir / "o2o-bridge"), "export", "events", "--config", str(shop / "bridge.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    ours = [e for e in old.EVENTS if e["store"] == STORE]
    assert [p["id"] for p in printed] == [e["id"] for e in ours]
    assert [p["data"] for p in printed] == [e["data"] for e in ours]
    assert [p["type"] for p in printed][:2] == ["checkin", "checkin"]


def rollups(engine: Engine) -> dict[str, set[tuple[Any, ...]]]:
    """The insights' roll-ups (migration 0004), every row, times as UTC instants."""

    def plain(value: Any) -> Any:
        return value.astimezone(UTC) if isinstance(value, datetime) else value

    with engine.connect() as conn:
        return {
            table.name: {tuple(plain(v) for v in row) for row in conn.execute(select(table))}
            for table in (
                EventCountRow.__table__,
                MemberVisitRow.__table__,
                MemberActivityRow.__table__,
            )
        }


def test_the_upgrade_fills_the_insights_roll_ups_from_the_events(
    old_url: str, tmp_path: Path
) -> None:
    """Migration 0004 counts the stored events in SQL exactly as the bridge counts each
    new one (rollup.py): the same rows as those events stored afresh, and the figures
    the events give (a second scan not counted, an older kiosk's visit without
    `counted` counted, the clock in 2999 on the day it arrived, each store its own)."""
    repo = Repository.from_url(old_url)
    fresh = Repository.from_url(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        repo.migrate()
        got = rollups(repo.engine)
        with repo.engine.connect() as conn:
            stored = [dict(r._mapping) for r in conn.execute(select(EventRow.__table__))]
        fresh.migrate()
        with fresh.engine.begin() as conn:
            rollup.add(conn, stored)
        assert got == rollups(fresh.engine)

        def counted(store: str, type_: str) -> int:
            return sum(n for s, _, t, n in got["event_counts"] if (s, t) == (store, type_))

        visits_of = [old.EVENTS[n - 1] for n in COUNTED]
        assert counted(STORE, "checkin") == sum(e["store"] == STORE for e in visits_of) == 6
        assert (counted(STORE, "member.joined"), counted("s2", "checkin")) == (1, 1)
        visits = {
            m: (v, first, last, prev)
            for s, m, _, first, last, prev, v in got["member_activity"]
            if s == STORE
        }
        ada = [old.EVENTS[n - 1]["ts"] for n in (1, 3, 8)]
        assert visits["ada"] == (3, ada[0], ada[2], ada[1])
        bob = old.EVENTS[11]
        assert visits["bob"][2] == bob["received_at"]  # dated 2999: counted when it arrived
        assert visits["cleo"][0] == 1
    finally:
        repo.close()
        fresh.close()


#: What migration 0006 puts in `events.coupon_id`, by event number: the coupon of each
#: redemption whose `coupon_id` is text of at most 256 characters; nothing for a
#: redemption of a number, of a longer id or of none, nor for a refusal naming a coupon.
COUPONS = {
    6: "cp1",
    13: "cp1",
    14: "cp2",
    15: "cp2",
    16: "card-1",
    17: "card-1",
    18: "card-1",
    23: "cp2",
}


def test_the_upgrade_fills_each_redemptions_coupon(old_url: str) -> None:
    """Migration 0006: the stored redemptions get their coupon in `events.coupon_id`, and
    the figures that look coupons up by it count as they did from the JSON: on day 12
    cp1 (first redeemed on day 7) and cp2 were each redeemed a second time, and the
    visit card of two uses was used a third time; cp2 at the other store is its first
    there. A batch of redemptions stored after the upgrade finds the earlier ones."""
    repo = Repository.from_url(old_url)
    try:
        repo.migrate()
        with repo.engine.connect() as conn:
            got = dict(conn.execute(select(EventRow.id, EventRow.coupon_id)).all())
        assert got == {event_id(n): COUPONS.get(n) for n in range(1, len(old.EVENTS) + 1)}

        day_12 = old.START + timedelta(days=12, hours=12)
        stats = repo.today_stats(STORE, now=day_12, zone=UTC)
        assert (stats["redemptions"], stats["double_redemptions"], stats["card_overuses"]) == (
            9,
            2,
            1,
        )
        assert stats["alerts"]["double_redemption"] is True
        other = repo.today_stats("s2", now=day_12, zone=UTC)
        assert (other["redemptions"], other["double_redemptions"]) == (1, 0)

        found = repo.redemptions_of(STORE, ["cp1", "cp2", "card-1", "cp9"])
        assert {c: [e.id for e in found[c]] for c in found} == {
            c: [event_id(n) for n in sorted(COUPONS) if COUPONS[n] == c and n != 23]
            for c in ("cp1", "cp2", "card-1")
        }
    finally:
        repo.close()
