"""Members' points on the bridge (docs/members.md): the ledger counts each earn and spend
once, never lets the online side spend below zero, keeps both of two offline doors'
spends and says who is overdrawn, and tells every kiosk the new balance.

On SQLite and PostgreSQL; the last test runs a real bridge against a real Mosquitto.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cloud_bridge.commands import ONE_BY_ONE, CommandService, checked_command, grouped
from cloud_bridge.config import MembersSection
from cloud_bridge.db import Repository
from cloud_bridge.members import BelowZero, KeyReused, MemberService, UnknownMember
from cloud_bridge.runtime import BridgeRuntime
from o2o_protocol.limits import Limits, json_bytes
from o2o_protocol.messages import Event, dumps
from o2o_protocol.timeutil import parse_rfc3339, rfc3339
from o2o_protocol.topics import kiosk_topic
from tests.support import MosquittoBroker, all_at_once
from tests.test_bridge_ingest import Peer, make_config
from tests.test_health import until

STORE = "s1"


@pytest.fixture
def db(any_repo: Repository) -> Repository:
    """The bridge's repository on SQLite and on PostgreSQL, every table emptied first."""
    return any_repo


def service(repo: Repository, **settings: Any) -> MemberService:
    return MemberService(
        repo,
        STORE,
        CommandService(repo, STORE),
        ["k1", "k2"],
        settings=MembersSection(**settings),
    )


_seq = iter(range(1, 10**6))


def event(kiosk: str, type: str, ts: float | None = None, **data: Any) -> Event:
    return Event(
        id=str(uuid.uuid4()),
        seq=next(_seq),
        type=type,
        ts=rfc3339(time.time() if ts is None else ts),
        store=STORE,
        kiosk=kiosk,
        data=data,
    )


def checkin(kiosk: str, member: str, earned: int, ts: float | None = None) -> Event:
    return event(
        kiosk, "checkin", ts, member_id=member, name="Ada", points_earned=earned, counted=True
    )


def spend(kiosk: str, member: str, points: int) -> Event:
    return event(
        kiosk,
        "points.redeemed",
        member_id=member,
        reward_id="coffee",
        reward="Coffee",
        points=points,
        voucher_id=f"v-{uuid.uuid4().hex[:8]}",
    )


def store(repo: Repository, members: MemberService, *events: Event) -> list[str]:
    """What the event sink does: store, then run the hook with the ids that were new."""
    new = repo.add_events(list(events))
    members.after_stored(list(events), set(new))
    return new


def upserts(repo: Repository, kiosk: str) -> list[dict[str, Any]]:
    """A kiosk's news of members in order, one by one or grouped."""
    news: list[dict[str, Any]] = []
    for c in repo.commands_after(STORE, kiosk, 0):
        if c.name == "member.upsert":
            news.append(c.data)
        elif c.name == "members.upsert":
            news.extend(c.data["members"])
    return news


def test_a_busy_batch_tells_each_door_in_a_command_not_one_per_member(db: Repository) -> None:
    members = service(db)
    visits = [checkin("k1", f"m{i:02}", 10) for i in range(ONE_BY_ONE + 5)]
    store(db, members, *visits)
    for kiosk in ("k1", "k2"):
        [cmd] = db.commands_after(STORE, kiosk, 0)
        assert cmd.name == "members.upsert"
        news = {m["id"]: m for m in cmd.data["members"]}
        assert sorted(news) == [f"m{i:02}" for i in range(len(visits))]
        assert {m["points"] for m in news.values()} == {10}
        # Each member's own `applied`: the door hears which of its events count.
        mine = {v.data["member_id"]: [v.id] for v in visits} if kiosk == "k1" else {}
        assert {m: n["applied"] for m, n in news.items()} == {m: mine.get(m, []) for m in news}
    # A quiet moment: one member's news is one `member.upsert`, as always.
    store(db, members, checkin("k2", "m00", 10))
    assert [c.name for c in db.commands_after(STORE, "k1", 1)] == ["member.upsert"]
    assert upserts(db, "k1")[-1]["points"] == 20


def test_grouped_news_stays_within_the_command_limit_and_keeps_every_item() -> None:
    limits = Limits(command_bytes=512)
    items = [
        ("k1", "member.upsert", {"id": f"m{i}", "points": i, "applied": []}) for i in range(40)
    ]
    items += [("k2", "coupon.used", {"id": "c1"}), ("k1", "code.revoke", {"id": "x"})]
    out = grouped(items, limits=limits)
    assert ("k2", "coupon.used", {"id": "c1"}) in out and ("k1", "code.revoke", {"id": "x"}) in out
    groups = [d for k, n, d in out if n == "members.upsert"]
    assert len(groups) > 1 and all(json_bytes(d) <= limits.command_bytes for d in groups)
    assert [m for d in groups for m in d["members"]] == [d for _, _, d in items[:40]]
    for data in groups:
        checked_command("members.upsert", data, limits=limits)  # each a valid command


def test_a_resent_checkin_counts_once(db: Repository) -> None:
    members = service(db)
    visit = checkin("k1", "ada", 10)
    assert store(db, members, visit) == [visit.id]
    assert store(db, members, visit) == []  # the kiosk sent it again: stored once
    # Even a hook that sees it as new twice (two workers) counts it once: ref is unique.
    members.after_stored([visit], {visit.id})
    ada = members.get("ada")
    assert ada is not None
    assert (ada.points, ada.visits, ada.name, ada.source) == (10, 1, "Ada", "kiosk:k1")
    assert [e.ref for e in members.ledger("ada")] == [f"event:{visit.id}"]
    # Within the cool-down (not counted): no entry, no visit.
    store(db, members, event("k1", "checkin", member_id="ada", points_earned=0, counted=False))
    ada = members.get("ada")
    assert ada is not None and (ada.points, ada.visits) == (10, 1)
    # Every kiosk heard the balance once, and k1 that its check-in is counted.
    assert [u["points"] for u in upserts(db, "k1")] == [10]
    assert upserts(db, "k1")[0]["applied"] == [visit.id]
    assert upserts(db, "k2")[0]["applied"] == []


def test_a_kiosk_clock_far_ahead_does_not_hold_the_cool_down_for_good(db: Repository) -> None:
    members = service(db)
    before = time.time()
    store(db, members, checkin("k1", "ada", 10), checkin("k2", "ada", 10, ts=0))
    ahead = event(
        "k2", "checkin", ts=32472144000, member_id="ada", points_earned=10, counted=True
    )  # 2999-01-01
    store(db, members, ahead)
    ada = members.get("ada")
    assert ada is not None and (ada.points, ada.visits) == (30, 3)
    assert ada.last_visit is not None and before - 1 <= ada.last_visit.timestamp() <= time.time()
    assert parse_rfc3339(upserts(db, "k1")[-1]["last_visit"]) == ada.last_visit


def test_events_the_ledger_missed_are_counted_once_later(db: Repository) -> None:
    members = service(db)
    visit, redeemed = checkin("k1", "ada", 30, ts=time.time() - 60), spend("k2", "ada", 20)
    joined = event("k1", "member.joined", member_id="bob", known=False)
    db.add_events([redeemed, joined, visit])  # stored and acked, but the hook never ran
    assert members.get("ada") is None
    since = datetime.now(UTC) - timedelta(days=1)
    assert members.catch_up(since) == 3
    ada, bob = members.get("ada"), members.get("bob")
    assert ada is not None and (ada.points, ada.visits) == (10, 1)
    assert bob is not None and bob.source == "kiosk:k1"
    assert [u for u in upserts(db, "k2") if u["id"] == "ada"][-1]["applied"] == [redeemed.id]
    assert not any(e.overdraft for e in members.ledger("ada"))  # in the order they came
    # Again (the next start, or alongside the live hook): nothing counts twice.
    assert members.catch_up(since) == 0
    members.after_stored([visit, redeemed, joined], {visit.id, redeemed.id, joined.id})
    ada = members.get("ada")
    assert ada is not None and ada.points == 10 and len(members.ledger("ada")) == 2


def test_the_same_idempotency_key_twice_changes_the_balance_once(db: Repository) -> None:
    members = service(db)
    members.create("ada", "Ada")
    first = members.change_points("ada", 25, "welcome gift", key="order-77")
    again = members.change_points("ada", 25, "welcome gift", key="order-77")
    assert first.points == again.points == 25
    members.change_points("ada", 5, "survey")
    # Repeated later, it still answers as the first did, and changes nothing.
    assert members.change_points("ada", 25, "welcome gift", key="order-77").points == 25
    ada = members.get("ada")
    assert ada is not None and ada.points == 30
    assert [e.delta for e in members.ledger("ada")] == [5, 25]
    with pytest.raises(KeyReused):
        members.change_points("ada", -25, "refund", key="order-77")
    with pytest.raises(UnknownMember):
        members.change_points("nobody", 5, "gift")


def test_an_online_spend_below_zero_is_refused_and_changes_nothing(db: Repository) -> None:
    members = service(db)
    members.create("ada", "Ada")
    members.change_points("ada", 30, "gift")
    told = len(upserts(db, "k1"))
    with pytest.raises(BelowZero):
        members.change_points("ada", -31, "voucher", key="k-31")
    ada = members.get("ada")
    assert ada is not None and ada.points == 30
    assert [e.delta for e in members.ledger("ada")] == [30]
    assert len(upserts(db, "k1")) == told  # no kiosk told of a change that did not happen
    # The same key can be used once the member has the points.
    members.change_points("ada", 1, "bonus")
    assert members.change_points("ada", -31, "voucher", key="k-31").points == 0


def test_two_doors_spending_the_same_points_are_both_kept_and_flagged(db: Repository) -> None:
    members = service(db)
    store(db, members, checkin("k1", "ada", 30))
    first, second = spend("k1", "ada", 30), spend("k2", "ada", 30)
    store(db, members, first)
    store(db, members, second)  # k2 was offline and spent the same points
    entries = members.ledger("ada")
    assert [(e.delta, e.source, e.overdraft) for e in entries] == [
        (-30, "kiosk:k2", True),
        (-30, "kiosk:k1", False),
        (30, "kiosk:k1", False),
    ]
    assert entries[0].reason == "reward:coffee"
    ada = members.get("ada")
    assert ada is not None and ada.points == -30 and ada.overdrawn
    assert [m.id for m in members.overdrawn()] == ["ada"]
    assert db.today_stats(STORE)["overdrawn_members"] == 1
    # Both kiosks hear the balance below zero, each with its own spend applied.
    k1, k2 = upserts(db, "k1")[-1], upserts(db, "k2")[-1]
    assert k1["points"] == k2["points"] == -30
    assert first.id in k1["applied"] and second.id in k2["applied"]
    # Settled online: no longer listed.
    members.change_points("ada", 30, "settled by the owner")
    assert members.overdrawn() == []
    assert db.today_stats(STORE)["overdrawn_members"] == 0


def test_concurrent_online_spends_never_go_below_zero(db: Repository) -> None:
    members = service(db)
    members.create("ada", "Ada")
    members.change_points("ada", 100, "gift")
    threads, start = 12, threading.Barrier(12)
    results: list[str] = []
    lock = threading.Lock()

    def spend_once(i: int) -> None:
        start.wait()
        try:
            members.change_points("ada", -30, f"voucher {i}")
            outcome = "spent"
        except BelowZero:
            outcome = "refused"
        with lock:
            results.append(outcome)

    workers = [threading.Thread(target=spend_once, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sorted(results) == ["refused"] * 9 + ["spent"] * 3
    ada = members.get("ada")
    assert ada is not None and ada.points == 10
    assert sum(e.delta for e in members.ledger("ada")) == 10
    assert not any(e.overdraft for e in members.ledger("ada"))


def test_a_referral_is_credited_once(db: Repository) -> None:
    members = service(db, referral_points=40)
    members.create("ada", "Ada")
    bob, created = members.create("bob", "Bob", referrer="ada")
    assert created and bob.referrer == "ada"
    again, created = members.create("bob", "Bobby", referrer="ada")
    assert not created and again.name == "Bobby"
    ada = members.get("ada")
    assert ada is not None and ada.points == 40
    assert [(e.delta, e.reason) for e in members.ledger("ada")] == [(40, "referral:bob")]
    # Joining at the door through a shared link credits the same way, once.
    joined = event("k2", "member.joined", member_id="cleo", known=False, referrer="ada")
    store(db, members, joined)
    members.after_stored([joined], {joined.id})
    cleo = members.get("cleo")
    assert cleo is not None and (cleo.source, cleo.referrer) == ("kiosk:k2", "ada")
    ada = members.get("ada")
    assert ada is not None and ada.points == 80
    # A referrer the store does not know, or oneself, credits no one.
    members.create("dan", referrer="nobody")
    members.create("eve", referrer="eve")
    dan, eve = members.get("dan"), members.get("eve")
    assert dan is not None and eve is not None and dan.referrer is None and eve.referrer is None
    assert members.get("nobody") is None
    told = [u for u in upserts(db, "k1") if u["id"] == "ada"][-1]
    assert told == {
        "id": "ada",
        "name": "Ada",
        "points": 80,
        "visits": 0,
        "last_visit": None,
        "applied": [],
        "version": members.book.entries("ada")[0].id,  # its newest entry
    }


def test_two_workers_telling_at_once_order_the_balances_by_version(db: Repository) -> None:
    a, b = service(db), service(db)  # two bridge workers on one database
    bought = checkin("k1", "ada", 100)
    store(db, a, bought)
    stale = a._upserts(["ada"])  # worker A has read ada (100 points)...
    spent = spend("k1", "ada", 100)
    store(db, b, spent)  # ...B counts a spend and tells k1 first...
    a._send(stale)  # ...then A's older read goes out under the later seq.
    told = upserts(db, "k1")
    (points_0, later_seq) = told[-2:]
    assert (points_0["points"], points_0["applied"]) == (0, [spent.id, bought.id])
    assert (later_seq["points"], later_seq["applied"]) == (100, [bought.id])
    # The kiosk keeps the upsert with the highest version: the spend is not undone.
    assert points_0["version"] > later_seq["version"]
    assert max(told, key=lambda u: u["version"])["points"] == 0
    # A rename changes no points: the same version, never a lower one.
    a.create("ada", "Ada L.")
    assert upserts(db, "k1")[-1]["version"] == points_0["version"]


def test_a_long_offline_stretch_is_named_in_applied_in_full(db: Repository) -> None:
    members = service(db)
    visits = [checkin("k1", "ada", 1, ts=time.time() - 600 + i) for i in range(70)]
    store(db, members, *visits)  # 70 pending at the kiosk (it keeps up to 100)
    applied = upserts(db, "k1")[-1]["applied"]
    assert upserts(db, "k1")[-1]["points"] == 70
    # Every one is named, so the kiosk drops all 70 and shows 70, not 70 + 20.
    assert sorted(applied) == sorted(v.id for v in visits)


def test_a_repeat_that_fills_in_a_missing_name_is_told(db: Repository) -> None:
    members = service(db)
    nameless = event("k1", "checkin", member_id="ada", points_earned=10, counted=True)
    store(db, members, nameless)
    assert upserts(db, "k2")[-1]["name"] is None
    # The same event again, now with the name (a second worker sees it as new too).
    named = nameless.model_copy(update={"data": {**nameless.data, "name": "Ada"}})
    members.after_stored([named], {named.id})
    ada = members.get("ada")
    assert ada is not None and (ada.name, ada.points) == ("Ada", 10)
    assert [u["name"] for u in upserts(db, "k2")] == [None, "Ada"]


def test_a_failed_hook_is_made_good_while_the_bridge_runs(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    repo: Repository,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest = BridgeRuntime(
        make_config(tmp_path, mosquitto_broker, kiosks=("k1",)),
        repo,
        stats_interval_s=0.2,
        catch_up_interval_s=0.2,
    )
    peer = Peer(mosquitto_broker, kiosk_topic(STORE, "k1", "cmd"), kiosk_topic(STORE, "k1", "acks"))
    visit = checkin("k1", "ada", 10)
    # The database refuses the first posting of this visit: the hook fails once.
    with repo.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON ledger_entries"
            f" WHEN NEW.ref = 'event:{visit.id}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    ingest.start()
    try:
        assert ingest.wait_ready(10)
        peer.publish(kiosk_topic(STORE, "k1", "events"), dumps(visit))
        assert peer.next(10)[1] == {"ids": [visit.id]}  # stored and acked...
        failed = f"could not count event {visit.id} (checkin) in the ledger"
        until(lambda: any(r.getMessage() == failed for r in caplog.records))  # ...the hook failed
        assert ingest.members.get("ada") is None
        with repo.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse")
        # No restart: the periodic pass counts it and k1 hears it.
        cmd = peer.next(10)[1]
        assert cmd["name"] == "member.upsert"
        assert (cmd["data"]["points"], cmd["data"]["applied"]) == (10, [visit.id])
        ada = ingest.members.get("ada")
        assert ada is not None and ada.points == 10
    finally:
        peer.close()
        ingest.stop()


def test_the_catch_up_leaves_to_the_hooks_what_they_still_hold(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    repo: Repository,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under a backlog, a batch is stored and acked but still queued for the ledger: the
    catch-up neither counts it one by one nor warns of events "missed"; the hooks count
    it, once, when they get to it."""
    bridge = BridgeRuntime(make_config(tmp_path, mosquitto_broker, kiosks=("k1",)), repo)
    visits = [checkin("k1", f"m{i}", 10) for i in range(5)]
    repo.add_events(visits)
    hooks = bridge.sink._after_commit
    hooks.hand_over(visits, {v.id for v in visits})  # queued: the hooks' thread is busy
    bridge.catch_up()
    assert bridge.members.get("m0") is None
    assert not any("had missed" in r.getMessage() for r in caplog.records)
    hooks.start()
    try:
        until(lambda: all(bridge.members.get(f"m{i}") is not None for i in range(5)))
        assert [bridge.members.get(f"m{i}").points for i in range(5)] == [10] * 5  # type: ignore[union-attr]
        assert bridge.members.catch_up(datetime.now(UTC) - timedelta(days=1)) == 0
    finally:
        hooks.stop()


def test_kiosks_hear_the_new_balance_over_mqtt(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, repo: Repository
) -> None:
    # Stored before a restart, but the bridge stopped before counting it.
    missed = checkin("k2", "bob", 5)
    repo.add_events([missed])
    ingest = BridgeRuntime(
        make_config(tmp_path, mosquitto_broker, kiosks=("k1", "k2")), repo, stats_interval_s=0.2
    )
    peers = {
        k: Peer(mosquitto_broker, kiosk_topic(STORE, k, "cmd"), kiosk_topic(STORE, k, "acks"))
        for k in ("k1", "k2")
    }
    ingest.start()
    try:
        assert ingest.wait_ready(10)
        bob = ingest.members.get("bob")
        assert bob is not None and bob.points == 5  # counted as the bridge started
        for k in ("k1", "k2"):
            bob_upsert = peers[k].next(10)[1]
            assert bob_upsert["data"]["id"] == "bob"
            assert bob_upsert["data"]["applied"] == ([missed.id] if k == "k2" else [])
        visit = checkin("k1", "ada", 10)
        peers["k1"].publish(kiosk_topic(STORE, "k1", "events"), dumps(visit))
        assert peers["k1"].next(10)[1] == {"ids": [visit.id]}
        for k, applied in (("k1", [visit.id]), ("k2", [])):
            topic, cmd, _ = peers[k].next(10)
            assert topic == kiosk_topic(STORE, k, "cmd")
            assert cmd["name"] == "member.upsert"
            data = cmd["data"]
            assert {f: data[f] for f in ("id", "name", "points", "visits", "applied")} == {
                "id": "ada",
                "name": "Ada",
                "points": 10,
                "visits": 1,
                "applied": applied,
            }
            # The visit's own time: the cool-down holds at the other door too.
            assert parse_rfc3339(data["last_visit"]) == parse_rfc3339(visit.ts)
        # A re-send is acked again but counted and told once.
        peers["k1"].publish(kiosk_topic(STORE, "k1", "events"), dumps(visit))
        assert peers["k1"].next(10)[1] == {"ids": [visit.id]}
        assert peers["k1"].nothing() and peers["k2"].nothing()
        ada = ingest.members.get("ada")
        assert ada is not None and ada.points == 10
    finally:
        for peer in peers.values():
            peer.close()
        ingest.stop()


# -- a batch of events at ingest rates ------------------------------------------------


def _state(repo: Repository, store_id: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every member and every ledger entry of a store, comparable across stores."""
    from cloud_bridge.db.tables import LedgerRow, MemberRow

    def read(session: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        members = session.execute(
            select(MemberRow.id, MemberRow.name, MemberRow.points, MemberRow.visits,
                   MemberRow.last_visit)
            .where(MemberRow.store == store_id).order_by(MemberRow.id)
        ).all()  # fmt: skip
        entries = session.execute(
            select(LedgerRow.member, LedgerRow.ref, LedgerRow.delta, LedgerRow.overdraft)
            .where(LedgerRow.store == store_id)
            .order_by(LedgerRow.id)
        ).all()
        return [tuple(m) for m in members], [tuple(e) for e in entries]

    return repo.read(read)


def test_a_batch_counts_exactly_as_its_events_one_by_one(db: Repository) -> None:
    """Check-ins and spends of several members, a repeat inside the batch and one of an
    earlier batch, names filled in, spends that overdraw: the batch path gives the same
    members, entries and overdraft flags as counting each event alone."""
    rng = random.Random(7)
    events: list[Event] = []
    for i in range(120):
        member = f"m{rng.randrange(12)}"
        kiosk = rng.choice(["k1", "k2"])
        if rng.random() < 0.3:
            events.append(spend(kiosk, member, rng.randrange(1, 40)))
        else:
            e = checkin(kiosk, member, rng.randrange(0, 20), ts=time.time() - 1000 + i)
            if rng.random() < 0.2:  # no name on this one
                e = e.model_copy(update={"data": {**e.data, "name": None}})
            events.append(e)
    events.insert(50, events[10])  # a repeat within the stream
    # Joins among them, one bringing in a member a check-in of the same batch names as
    # referrer, one for a member already checked in: counted where they stand.
    events.insert(20, event("k1", "member.joined", member_id="new1", name="Neo", referrer="m3"))
    events.insert(21, checkin("k2", "new1", 5))
    events.insert(60, event("k2", "member.joined", member_id="m4", name="Again", referrer="m5"))
    # A chain within one batch (new3 brought in by new2, who joined just before), a join
    # after the member's own check-in, a member joining twice, one naming itself, one
    # the kiosk already knew, and one whose referrer is unknown.
    events.insert(81, event("k1", "member.joined", member_id="new2", referrer="m1"))
    events.insert(82, event("k2", "member.joined", member_id="new3", name="Tri", referrer="new2"))
    events.insert(83, checkin("k1", "new4", 3))
    events.insert(84, event("k1", "member.joined", member_id="new4", referrer="m2"))
    events.insert(85, event("k2", "member.joined", member_id="new2", referrer="m6"))
    events.insert(86, event("k2", "member.joined", member_id="new5", referrer="new5"))
    events.insert(87, event("k1", "member.joined", member_id="m7", known=True, name="Kn"))
    events.insert(88, event("k1", "member.joined", member_id="new6", referrer="nobody"))
    batched = service(db)
    for start in range(0, len(events), 40):
        chunk = events[start : start + 40]
        batched.after_stored(chunk, {e.id for e in chunk})
    one_by_one = MemberService(
        db, "s2", CommandService(db, "s2"), ["k1", "k2"], settings=MembersSection()
    )
    for e in events:
        moved = e.model_copy(update={"store": "s2"})
        one_by_one._apply(moved)
    assert _state(db, STORE) == _state(db, "s2")
    members, entries = _state(db, STORE)
    assert any(points < 0 for _, _, points, _, _ in members)  # the case is exercised
    assert any(overdraft for *_, overdraft in entries)
    counted = {e.id for e in events if e.type != "member.joined"}
    # and the referral credits: m3 for new1, m1 for new2, new2 for new3 (new4 had checked
    # in before joining, new2's second join finds it known, the others name nobody)
    assert len(entries) == len(counted) + 3
    credits = {(member, ref) for member, ref, *_ in entries if ref.startswith("referral:")}
    assert credits == {("m3", "referral:new1"), ("m1", "referral:new2"), ("new2", "referral:new3")}
    assert {"new5", "new6"} <= {m for m, *_ in members}


def test_a_batch_tells_each_door_once_per_member_with_gapless_seqs(db: Repository) -> None:
    members = service(db)
    batch = [checkin("k1", f"m{i % 5}", 10, ts=time.time() - 100 + i) for i in range(20)]
    store(db, members, *batch)
    for kiosk in ("k1", "k2"):
        told = upserts(db, kiosk)
        assert sorted(u["id"] for u in told) == [f"m{i}" for i in range(5)]
        assert all(u["points"] == 40 and u["visits"] == 4 for u in told)
        seqs = [c.seq for c in db.commands_after(STORE, kiosk, 0)]
        assert seqs == list(range(1, len(seqs) + 1))
    k1 = {u["id"]: u["applied"] for u in upserts(db, "k1")}
    assert k1["m0"] == [e.id for e in reversed(batch) if e.data["member_id"] == "m0"]
    assert all(u["applied"] == [] for u in upserts(db, "k2"))


def test_workers_counting_batches_at_once_lose_nothing(db: Repository) -> None:
    """Two workers' batches naming the same members at the same moment (PostgreSQL: row
    locks in id order; SQLite: one writer): every point counted once, and every door's
    commands stay gapless."""
    a, b = service(db), service(db)
    batches = [
        [checkin(k, f"m{(i * 7 + j) % 9}", 5, ts=time.time() - 500 + j) for j in range(30)]
        for i, k in enumerate(["k1", "k2", "k1", "k2"])
    ]
    for bx in batches:
        db.add_events(bx)
    jobs = iter(zip([a, b, a, b], batches, strict=True))
    taking = threading.Lock()

    def count_a_batch() -> None:
        with taking:
            worker, batch = next(jobs)
        worker.after_stored(batch, {e.id for e in batch})

    results = all_at_once(len(batches), count_a_batch)
    assert all(r is None for r in results), results
    for kiosk in ("k1", "k2"):  # every door heard of every member
        assert {u["id"] for u in upserts(db, kiosk)} == {f"m{i}" for i in range(9)}
    members, entries = _state(db, STORE)
    assert len(entries) == 120
    assert sum(points for _, _, points, _, _ in members) == 600
    assert sum(visits for *_, visits, _ in members) == 120
    for kiosk in ("k1", "k2"):
        seqs = [c.seq for c in db.commands_after(STORE, kiosk, 0)]
        assert seqs == list(range(1, len(seqs) + 1))


def test_commands_queued_at_once_are_all_kept_in_order(db: Repository) -> None:
    """Threads queueing for the same doors at the same moment (the ledger's news, a pool
    refill, an API request): every command is kept, each door's seqs gapless."""
    done = all_at_once(
        4,
        lambda: [
            db.add_commands(STORE, [(k, "code.revoke", {"id": f"c{i}"}) for k in ("k1", "k2")])
            for i in range(25)
        ],
    )
    assert not [r for r in done if isinstance(r, Exception)], done
    for kiosk in ("k1", "k2"):
        seqs = [c.seq for c in db.commands_after(STORE, kiosk, 0)]
        assert seqs == list(range(1, 101))
