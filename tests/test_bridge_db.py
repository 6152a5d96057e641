"""The bridge's database keeps each event exactly once, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from cloud_bridge.db import Repository, UnstorableEvent, is_connection_error, is_write_conflict
from o2o_protocol.messages import Event, Status, new_event_id
from o2o_protocol.timeutil import rfc3339


def make_events(n: int, *, kiosk: str = "k1", store: str = "s1", **data: object) -> list[Event]:
    now = time.time()
    return [
        Event(
            id=new_event_id(),
            seq=i + 1,
            type="checkin",
            ts=rfc3339(now + i / 1000),
            store=store,
            kiosk=kiosk,
            data=dict(data),
        )
        for i in range(n)
    ]


@pytest.fixture
def repo(any_repo: Repository) -> Repository:
    return any_repo


def test_an_event_sent_again_is_stored_once(repo: Repository) -> None:
    events = make_events(3)
    assert repo.add_events(events) == [e.id for e in events]
    assert repo.add_events(events) == []
    # The same id twice in one batch, plus one new event.
    extra = make_events(1)
    assert repo.add_events([extra[0], extra[0], events[0]]) == [extra[0].id]
    assert repo.count_events() == 4


def test_events_round_trip_as_envelopes(repo: Repository) -> None:
    e = Event(
        id=new_event_id(),
        seq=7,
        type="scan.rejected",
        ts="2026-03-01T09:30:00.250+08:00",
        store="s1",
        kiosk="k1",
        data={"reason": "expired", "名": "小明"},
    )
    repo.add_events([e])
    [stored] = repo.events()
    assert stored.envelope() == {
        "id": e.id,
        "seq": 7,
        "type": "scan.rejected",
        "ts": "2026-03-01T01:30:00.250Z",  # stored as UTC
        "store": "s1",
        "kiosk": "k1",
        "data": {"reason": "expired", "名": "小明"},
    }
    assert stored.ts.tzinfo is not None


def test_filters_and_newest_first(repo: Repository) -> None:
    a = make_events(3, kiosk="k1")
    b = make_events(2, kiosk="k2")
    repo.add_events(a + b)
    newest = repo.events(limit=10)
    assert [e.ts for e in newest] == sorted((e.ts for e in newest), reverse=True)
    assert {e.id for e in repo.events(kiosk="k2")} == {e.id for e in b}
    assert len(repo.events(limit=2)) == 2
    future = datetime.now(UTC) + timedelta(hours=1)
    assert repo.events(since=future) == []


def test_today_stats_counts_by_type_and_reason(repo: Repository) -> None:
    now = time.time()

    def ev(type_: str, **data: object) -> Event:
        return Event(
            id=new_event_id(), seq=1, type=type_, ts=rfc3339(now), store="s1", kiosk="k1", data=data
        )

    old = Event(
        id=new_event_id(),
        seq=1,
        type="checkin",
        ts=rfc3339(now - 3 * 86400),
        store="s1",
        kiosk="k1",
    )
    repo.add_events(
        [
            ev("checkin"),
            ev("checkin"),
            ev("coupon.redeemed"),
            ev("scan.rejected", reason="expired"),
            ev("scan.rejected", reason="expired"),
            ev("scan.rejected", reason="already_used"),
            old,
        ]
    )
    repo.set_status("s1", "k1", Status(online=True, ts=rfc3339(now)), seen=datetime.now(UTC))
    stats = repo.today_stats("s1")
    assert stats["checkins"] == 2
    assert stats["redemptions"] == 1
    assert stats["rejected"] == 3
    assert stats["rejections"] == {"already_used": 1, "expired": 2}
    assert stats["events"] == 6
    assert stats["kiosks_online"] == 1
    assert repo.today_stats("other")["events"] == 0


def test_status_keeps_last_seen_when_the_will_arrives(repo: Repository) -> None:
    seen = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    repo.set_status("s1", "k1", Status(online=True, outbox=3), seen=seen)
    repo.set_status("s1", "k1", Status(online=False), seen=None)
    [k] = repo.kiosks("s1")
    assert (k.online, k.last_seen, k.last_status) == (False, seen, {"online": False})


def test_two_concurrent_writers_store_each_id_once(repo: Repository) -> None:
    """Two bridge workers receiving the same re-sent batch at the same moment."""
    events = make_events(300)
    # A second writer with its own engine, as a second bridge process would have.
    other = Repository.from_url(repo.engine.url.render_as_string(hide_password=False))
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def write(r: Repository, batch: list[Event]) -> None:
        try:
            barrier.wait()
            for i in range(0, len(batch), 20):
                results.append(r.add_events(batch[i : i + 20]))
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=(repo, events)),
        threading.Thread(target=write, args=(other, list(reversed(events)))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    stored = [i for r in results for i in r]
    assert sorted(stored) == sorted(e.id for e in events)  # each new exactly once
    assert repo.count_events() == 300
    other.close()


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    r = Repository.from_url(f"sqlite:///{tmp_path / 'sub' / 'b.db'}")
    r.migrate()
    with r.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    r.close()


def test_commands_are_numbered_per_kiosk(repo: Repository) -> None:
    assert [repo.add_command("s1", "k1", "code.revoke", {"id": f"c{i}"}).seq for i in range(3)] == [
        1,
        2,
        3,
    ]
    assert repo.add_command("s1", "k2", "locker.open", {"locker": 1}).seq == 1
    assert [(c.seq, c.data) for c in repo.commands_after("s1", "k1", 1)] == [
        (2, {"id": "c1"}),
        (3, {"id": "c2"}),
    ]


def _sorted_pair() -> tuple[Event, Event]:
    low, high = sorted(make_events(2), key=lambda e: e.id)
    return low, high


def test_overlapping_batches_in_opposite_orders_do_not_deadlock(pg_url: str) -> None:
    """Another transaction holds `low` and then wants `high`; our batch says [high, low].

    Inserting in the batch's order would take `high`, wait for `low`: a lock cycle that
    PostgreSQL breaks by aborting one side. In id order we wait for `low` holding nothing.
    """
    repo = Repository.from_url(pg_url)
    repo.migrate()
    other = Repository.from_url(pg_url)
    low, high = _sorted_pair()
    result: list[list[str]] = []
    errors: list[BaseException] = []

    def ours() -> None:
        try:
            result.append(repo.add_events([high, low]))
        except BaseException as exc:
            errors.append(exc)

    try:
        with other.engine.connect() as conn:
            conn.execute(text("SET deadlock_timeout = '200ms'"))
            conn.execute(
                text(
                    "INSERT INTO events (id, store, kiosk, seq, type, ts, data, received_at)"
                    " VALUES (:id, 's1', 'k1', 1, 'checkin', now(), '{}', now())"
                ),
                {"id": low.id},
            )
            thread = threading.Thread(target=ours)
            thread.start()
            deadline = time.monotonic() + 10
            while True:  # wait until our insert is blocked on `low`
                with repo.engine.connect() as probe:
                    waiting = probe.scalar(
                        text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                    )
                if waiting or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            assert waiting, "our insert never waited for the other transaction"
            conn.execute(
                text(
                    "INSERT INTO events (id, store, kiosk, seq, type, ts, data, received_at)"
                    " VALUES (:id, 's1', 'k1', 2, 'checkin', now(), '{}', now())"
                    " ON CONFLICT (id) DO NOTHING"
                ),
                {"id": high.id},
            )
            conn.commit()
        thread.join(20)
        assert not errors, errors
        assert result == [[]]  # both were the other writer's
        assert repo.count_events() >= 2
    finally:
        with repo.engine.begin() as conn:
            conn.execute(text("DELETE FROM events"))
        other.close()
        repo.close()


class _Deadlock(Exception):
    sqlstate = "40P01"


class _ServerGone(Exception):
    pass


def test_a_transaction_aborted_by_a_deadlock_is_run_again(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = repo._insert_events
    calls: list[int] = []

    def flaky(session: Any, values: list[dict[str, Any]]) -> set[str]:
        calls.append(len(values))
        if len(calls) < 3:
            raise OperationalError("INSERT", {}, _Deadlock("deadlock detected"))
        return real(session, values)

    monkeypatch.setattr(repo, "_insert_events", flaky)
    events = make_events(3)
    assert repo.add_events(events) == [e.id for e in events]
    assert len(calls) == 3 and repo.count_events() == 3


def test_error_classification() -> None:
    deadlock = OperationalError("x", {}, _Deadlock("deadlock detected"))
    gone = OperationalError("x", {}, _ServerGone("server closed the connection"))
    assert is_write_conflict(deadlock) and not is_write_conflict(gone)
    assert is_connection_error(gone) and is_connection_error(deadlock)
    assert not is_connection_error(ValueError("bad value"))
    assert not is_connection_error(UnstorableEvent("NUL"))


def test_a_nul_in_data_is_refused_and_can_be_quarantined(repo: Repository) -> None:
    """PostgreSQL's json takes \\u0000 but every later ->> on the row fails: refuse it."""
    [bad] = make_events(1, note="a\u0000b")
    with pytest.raises(UnstorableEvent):
        repo.add_events([bad])
    assert repo.count_events() == 0
    assert repo.reject_event(bad, "UnstorableEvent: NUL") is True
    assert repo.reject_event(bad, "UnstorableEvent: NUL") is False  # a re-send: kept once
    [q] = repo.rejected_events(store="s1")
    assert (q.id, q.store, q.kiosk, q.error) == (bad.id, "s1", "k1", "UnstorableEvent: NUL")
    assert json.loads(q.raw) == bad.model_dump()
    assert repo.today_stats("s1")["events"] == 0  # and the figures still work


def test_double_redemptions_are_counted(repo: Repository) -> None:
    now = time.time()

    def redeemed(coupon: str, kiosk: str) -> Event:
        return Event(
            id=new_event_id(),
            seq=1,
            type="coupon.redeemed",
            ts=rfc3339(now),
            store="s1",
            kiosk=kiosk,
            data={"coupon_id": coupon},
        )

    first = redeemed("cp1", "k1")
    repo.add_events([first, redeemed("cp2", "k1")])
    assert repo.today_stats("s1")["double_redemptions"] == 0
    second = redeemed("cp1", "k2")
    repo.add_events([second])
    assert repo.today_stats("s1")["double_redemptions"] == 1
    assert [e.id for e in repo.redemptions("s1", "cp1")] == [first.id, second.id]


def test_the_sqlite_files_are_private(tmp_path: Path) -> None:
    """bridge.db holds member names: 0600 like the kiosk's journal, -wal and -shm too."""
    path = tmp_path / "shop" / "bridge.db"
    r = Repository.from_url(f"sqlite:///{path}")
    try:
        r.migrate()
        r.add_events([_modes_event()])
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
            f.name: "0o600" for f in files
        }
    finally:
        r.close()
    # A database made by an earlier version (0644) is made private when opened.
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if f.exists():
            f.chmod(0o644)
    r = Repository.from_url(f"sqlite:///{path}")
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert r.count_events() == 1
        for f in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert not f.exists() or oct(f.stat().st_mode & 0o777) == "0o600"
    finally:
        r.close()


def _modes_event() -> Event:
    return Event(
        id=new_event_id(),
        seq=1,
        type="checkin",
        ts=rfc3339(time.time()),
        store="s1",
        kiosk="k1",
        data={"name": "Ada"},
    )


def _at(ts: str, type_: str = "checkin", seq: int = 1, **data: object) -> Event:
    return Event(
        id=new_event_id(), seq=seq, type=type_, ts=ts, store="s1", kiosk="k1", data=dict(data)
    )


def test_a_kiosk_clock_far_off_is_flagged_and_distorts_neither_figures_nor_order(
    repo: Repository,
) -> None:
    now = datetime.now(UTC)
    future = _at("2999-01-01T00:00:00Z", seq=1, name="from 2999")
    past = _at("1971-06-01T12:00:00Z", seq=2, name="from 1971")
    normal = [_at(rfc3339(now.timestamp() - 50 + i), seq=3 + i) for i in range(3)]
    repo.add_events([future, past], now=now - timedelta(seconds=55))
    repo.add_events(normal)
    later = _at(rfc3339(now.timestamp() - 30), seq=9)
    repo.add_events([later], now=now + timedelta(seconds=1))

    # Newest first: the 2999 event sits where it arrived (55 s ago), not on top for good.
    newest = repo.events(limit=10)
    assert [e.id for e in newest][:4] == [later.id, normal[2].id, normal[1].id, normal[0].id]
    assert newest[4].id == future.id and newest[-1].id == past.id
    assert [e.id for e in repo.events(limit=2)] == [later.id, normal[2].id]
    assert [e.id for e in repo.events(limit=10, oldest_first=True)] == [
        e.id for e in reversed(newest)
    ]
    assert [e.id for e in repo.iter_events()] == [e.id for e in reversed(newest)]
    # Flagged at query time: ts more than a day off the time it was received.
    flags = {e.id: e.ts_flag for e in newest}
    assert flags[future.id] == "ahead" and flags[past.id] == "behind"
    assert {flags[e.id] for e in [*normal, later]} == {None}
    # `since` goes by the same time: the 2999 event is as old as its arrival.
    assert future.id not in {e.id for e in repo.events(since=now + timedelta(hours=1))}
    assert future.id in {e.id for e in repo.events(since=now - timedelta(minutes=1))}

    # Today's figures: the 2999 check-in counts on the day it arrived, the 1971 one not.
    stats = repo.today_stats("s1", now=now)
    assert stats["by_type"]["checkin"] == 5  # three normal, `later`, the one from 2999
    assert stats["checkins"] == 5
    assert repo.today_stats("s1", now=now + timedelta(days=1))["events"] == 0


def test_checkins_count_only_counted_visits(repo: Repository) -> None:
    ts = rfc3339(time.time())
    repo.add_events(
        [
            _at(ts, seq=1, counted=True, points_earned=10),
            _at(ts, seq=2, counted=False, points_earned=0),  # within the cool-down
            _at(ts, seq=3),  # an older kiosk writes no `counted`: it counted
            _at(ts, seq=4, counted="odd"),  # not true, not absent: not counted
            _at(ts, seq=5, counted=None),
        ]
    )
    stats = repo.today_stats("s1")
    assert stats["by_type"]["checkin"] == 5
    assert stats["checkins"] == 2
