"""The kiosk's local database: outcomes durable before they are shown, acks empty the outbox,
power cuts never corrupt it, and old history goes away while un-acked events stay."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiosk import decisions
from kiosk.commands import apply_command
from kiosk.decisions import Decision
from kiosk.effects import CodeUsed, MemberVisit, PreorderChange
from kiosk.localdb import DB_FILE, MAX_PENDING, DBError, KioskDB, _doc_id
from kiosk.loyalty import RatingSubject
from o2o_protocol.codes import Code, CodeType, verify_code
from o2o_protocol.messages import Command, EventType, Reason
from tests.keys import Issuer

ISSUER = Issuer()


def open_store(path: Path, **kw: object) -> KioskDB:
    return KioskDB(path, store="s1", kiosk="k1", **kw)  # type: ignore[arg-type]


def code(t: str, id: str, **fields: object) -> Code:
    c = verify_code(ISSUER.code(t, id, **fields), ISSUER.public_keys, store="s1", now=time.time())
    assert isinstance(c, Code)
    return c


def redeem(s: KioskDB, cid: str, now: float | None = None) -> str:
    d = Decision(
        EventType.COUPON_REDEEMED,
        {"coupon_id": cid},
        effects=(CodeUsed(cid, CodeType.COUPON, exp=int(time.time()) + 3600),),
    )
    return s.record(d, now or time.time()).event.id


def test_recorded_outcome_survives_reopen_with_gapless_seq(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    ids = [redeem(s, f"c{i}") for i in range(3)]
    s.close()
    s2 = open_store(tmp_path)
    pending = s2.pending()
    assert [e.id for e in pending] == ids
    assert [e.seq for e in pending] == [1, 2, 3]
    assert s2.facts_for(code("c", "c1")).coupon_used_at is not None
    assert s2.facts_for(code("c", "zz")).coupon_used_at is None
    assert s2.record(Decision(EventType.CHECKIN), time.time()).event.seq == 4


def test_ack_removes_only_named_events_and_survives_reopen(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    events = [s.record(Decision(EventType.CHECKIN), time.time()).event for _ in range(5)]
    assert s.ack([events[1].id, events[3].id, "unknown"]) == 2
    assert s.ack([events[1].id]) == 0
    assert [e.id for e in s.pending()] == [events[i].id for i in (0, 2, 4)]
    assert [e.id for e in s.pending(limit=2)] == [events[0].id, events[2].id]
    s.close()
    s2 = open_store(tmp_path)
    assert s2.outbox_size() == 3
    assert s2.history_size() == 5  # history keeps acked events too


def test_member_visits_accumulate(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.record(Decision(EventType.CHECKIN, effects=(MemberVisit("u1", "Ann", 10, "d1"),)), 0)
    s.record(Decision(EventType.CHECKIN, effects=(MemberVisit("u1", None, 10, "d2"),)), 0)
    facts = s.facts_for(code("m", "u1"))
    assert (facts.member_visits, facts.member_points, facts.member_last_day) == (2, 20, "d2")
    assert facts.member_last_at == 0  # the time of the last counted visit, for the cooldown


def test_commands_apply_once_and_in_order(tmp_path: Path) -> None:
    s = open_store(tmp_path, lockers=[(1, "S"), (2, "L")])
    assert apply_command(s, Command(seq=2, name="code.revoke", data={"id": "c8"})) is False
    assert apply_command(s, Command(seq=1, name="code.revoke", data={"id": "c9"})) is True
    assert apply_command(s, Command(seq=1, name="code.revoke", data={"id": "c9"})) is False
    assert apply_command(
        s, Command(seq=2, name="preorder.upsert", data={"order": "A1", "size": "l", "name": "Li"})
    )
    assert apply_command(s, Command(seq=3, name="member.upsert", data={"id": "u5", "points": 40}))
    assert s.last_cmd_seq == 3
    assert s.facts_for(code("c", "c9")).revoked and not s.facts_for(code("c", "c8")).revoked
    pre = s.preorder("A1")
    assert pre is not None and (pre.status, pre.size, pre.name) == ("pending", "L", "Li")
    assert s.facts_for(code("m", "u5")).member_points == 40
    s.close()
    s2 = open_store(tmp_path, lockers=[(1, "S"), (2, "L")])
    assert s2.last_cmd_seq == 3
    assert s2.facts_for(code("p", "pk", o="A1"), staff=True).free_lockers == ((1, "S"), (2, "L"))


def test_order_moves_through_a_locker_and_frees_it(tmp_path: Path) -> None:
    s = open_store(tmp_path, lockers=[(1, "M"), (2, "M")])
    apply_command(s, Command(seq=1, name="preorder.upsert", data={"order": "A1"}))
    s.record(Decision(EventType.LOCKER_LOADED, effects=(PreorderChange("A1", "ready", 2),)), 0)
    assert s.free_lockers() == ((1, "M"),)
    assert s.locker_orders() == {1: None, 2: "A1"}
    s.record(
        Decision(EventType.PICKUP_COMPLETED, effects=(PreorderChange("A1", "picked_up", None),)), 0
    )
    assert s.free_lockers() == ((1, "M"), (2, "M"))
    pre = s.preorder("A1")
    assert pre is not None and pre.status == "picked_up"


def test_cancel_frees_the_locker(tmp_path: Path) -> None:
    s = open_store(tmp_path, lockers=[(1, "M")])
    apply_command(s, Command(seq=1, name="preorder.upsert", data={"order": "A1"}))
    s.record(Decision(EventType.LOCKER_LOADED, effects=(PreorderChange("A1", "ready", 1),)), 0)
    apply_command(s, Command(seq=2, name="preorder.cancel", data={"order": "A1"}))
    assert s.free_lockers() == ((1, "M"),)
    pre = s.preorder("A1")
    assert pre is not None and pre.status == "cancelled"


def test_torn_journal_tail_is_dropped(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    first = redeem(s, "c1")
    s.close()
    journal = (tmp_path / DB_FILE).with_suffix(".journal")
    with journal.open("ab") as f:  # the power went mid-append
        f.write(b'{"c":[["outbox",{"2":{"id":"x","se')
    s2 = open_store(tmp_path)
    assert [e.id for e in s2.pending()] == [first]
    second = redeem(s2, "c2")  # and the store keeps working after the cut-off
    s2.close()
    assert [e.id for e in open_store(tmp_path).pending()] == [first, second]


def test_interrupted_compaction_leaves_the_last_good_state(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    first = redeem(s, "c1")
    s._storage.compact()
    second = redeem(s, "c2")
    s.close()
    (tmp_path / DB_FILE).with_suffix(".tmp").write_text('{"outbox": {"1": {"trunc')
    assert [e.id for e in open_store(tmp_path).pending()] == [first, second]


def test_damaged_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_text("{not json")
    with pytest.raises(DBError, match="damaged"):
        open_store(tmp_path)


def test_write_cost_does_not_depend_on_the_store_size(tmp_path: Path) -> None:
    """Each write appends only what changed: the journal grows by about one event."""
    s = open_store(tmp_path)
    journal = (tmp_path / DB_FILE).with_suffix(".journal")
    sizes = []
    for i in range(300):
        before = journal.stat().st_size if journal.exists() else 0
        redeem(s, f"c{i}")
        sizes.append(journal.stat().st_size - before)
    assert max(sizes[-10:]) < 2 * max(sizes[:10])


def test_history_is_pruned_but_unacked_events_never(tmp_path: Path) -> None:
    now = time.time()
    s = open_store(tmp_path, history_days=30)
    old = [redeem(s, f"old{i}", now - 40 * 86400) for i in range(3)]
    recent = redeem(s, "new", now - 86400)
    s.ack(old[:2])
    assert s.prune(now) >= 3
    assert [e["id"] for e in s.history()] == [recent]
    assert [e.id for e in s.pending()] == [old[2], recent]  # un-acked old event kept


def test_store_files_are_plain_json_an_owner_can_inspect(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.record(Decision(EventType.CHECKIN, {"member_id": "u1"}), 0)
    s._storage.compact()
    data = json.loads((tmp_path / DB_FILE).read_text())
    (event,) = data["outbox"].values()
    assert event["type"] == "checkin" and event["data"] == {"member_id": "u1"}


def test_short_write_on_a_full_disk_leaves_the_store_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiosk.journal as journal

    s = open_store(tmp_path)
    first = redeem(s, "c1")
    real_write = journal.os.write

    def short(fd: int, data: bytes) -> int:  # the disk takes a few bytes, then is full
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(journal.os, "write", short)
        with pytest.raises(DBError):
            redeem(s, "c2")
    assert [e.id for e in s.pending()] == [first]
    assert s.facts_for(code("c", "c1")).coupon_used_at is not None
    assert s.facts_for(code("c", "c2")).coupon_used_at is None
    third = redeem(s, "c3")
    s.close()
    s2 = open_store(tmp_path)
    assert [e.id for e in s2.pending()] == [first, third]
    assert [e.seq for e in s2.pending()] == [1, 2]


def test_failed_fsync_counts_for_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that cannot fsync is failing: the write counts for nothing, and the store
    refuses further writes (with a reason) until the kiosk restarts and reads the disk."""
    import kiosk.journal as journal

    s = open_store(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(journal.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "EIO")))
        with pytest.raises(DBError):
            redeem(s, "c1")
    assert s.outbox_size() == 0 and s.pending() == []
    assert s.facts_for(code("c", "c1")).coupon_used_at is None
    with pytest.raises(DBError, match="restart"):
        redeem(s, "c1")
    s.close()
    s2 = open_store(tmp_path)  # restarted: the disk is the truth, and the coupon unused
    assert s2.facts_for(code("c", "c1")).coupon_used_at is None
    event = redeem(s2, "c1")
    assert s2.ack([event]) == 1 and s2.outbox_size() == 0


def test_damage_in_the_middle_of_the_journal_refuses_to_open(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    redeem(s, "c1")
    redeem(s, "c2")
    s.close()
    journal = (tmp_path / DB_FILE).with_suffix(".journal")
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0][:20] + b"\n" + b"".join(lines[1:]))
    with pytest.raises(DBError, match="damaged"):
        open_store(tmp_path)


def test_commands_with_bad_data_are_skipped_not_blocking(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    assert apply_command(
        s, Command(seq=1, name="member.upsert", data={"id": "u1", "points": "lots"})
    )
    assert apply_command(
        s, Command(seq=2, name="preorder.upsert", data={"order": "A1", "size": "SM"})
    )
    assert apply_command(s, Command(seq=3, name="code.revoke", data={"id": "c1"}))
    assert s.last_cmd_seq == 3
    assert s.facts_for(code("m", "u1")).member_points == 0
    assert s.preorder("A1") is None
    assert s.facts_for(code("c", "c1")).revoked


def test_coupon_used_at_another_kiosk_is_already_used_here(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    apply_command(
        s,
        Command(
            seq=1,
            name="coupon.used",
            data={"id": "c7", "at": "2026-11-26T10:00:00.000Z", "kiosk": "k2"},
        ),
    )
    assert s.facts_for(code("c", "c7")).coupon_used_at == "2026-11-26T10:00:00.000Z"


def test_commands_are_stamped_with_the_injected_clock(tmp_path: Path) -> None:
    """The database reads no wall clock of its own for what it writes."""
    s = KioskDB(tmp_path, store="s1", kiosk="k1", clock=lambda: 1_800_000_000.0)
    assert apply_command(s, Command(seq=1, name="code.revoke", data={"id": "c9"}))
    assert apply_command(s, Command(seq=2, name="coupon.used", data={"id": "c7"}))
    assert apply_command(s, Command(seq=3, name="coupon.used", data={"id": "c7", "kiosk": "k2"}))
    s._storage.compact()
    data = json.loads((tmp_path / DB_FILE).read_text())
    stamps = {d["id"]: d["at"] for table in ("revoked", "redeemed") for d in data[table].values()}
    assert stamps == {"c9": "2027-01-15T08:00:00.000Z", "c7": "2027-01-15T08:00:00.000Z"}
    (used,) = data["redeemed"].values()
    assert used["kiosk"] is None  # the first use wins: single use per store
    s.close()


# --- members, rewards and code pools (docs/members.md) -----------------------------------

YEAR = 365 * 86400


def voucher(id: str, exp: float | None = None) -> dict[str, str]:
    """A pooled coffee voucher as the bridge signs it: valid a year unless told."""
    end = int(time.time() + YEAR if exp is None else exp)
    return {"id": id, "code": ISSUER.code("c", id, cp="reward:coffee", exp=end)}


VOUCHERS = [voucher(f"v{i}") for i in (1, 2)]
CATALOGUE = {"rewards": [{"id": "coffee", "name": "咖啡", "points": 30, "stock": 5}]}


def stocked(path: Path) -> KioskDB:
    """A kiosk holding the catalogue and two coffee vouchers (commands 1 and 2)."""
    s = open_store(path)
    assert apply_command(s, Command(seq=1, name="rewards.set", data=CATALOGUE))
    refill = {"kind": "voucher", "reward": "coffee", "codes": VOUCHERS}
    assert apply_command(s, Command(seq=2, name="pool.refill", data=refill))
    return s


def spend(s: KioskDB, member: str = "u1") -> str:
    """Redeem a coffee the way the runtime does: read, decide, record in one write."""
    reward, voucher = s.reward("coffee"), s.pooled("voucher", "coffee")
    d = decisions.redeem(member, reward, s.member_facts(member), voucher)
    assert d.event_type is EventType.POINTS_REDEEMED, d.data
    return s.record(d, time.time()).event.id


def visit(s: KioskDB, member: str = "u1", points: int = 10) -> str:
    effect = MemberVisit(member, None, points, "d1")
    return s.record(Decision(EventType.CHECKIN, effects=(effect,)), time.time()).event.id


def upsert(s: KioskDB, **data: object) -> None:
    assert apply_command(s, Command(seq=s.last_cmd_seq + 1, name="member.upsert", data=data))


def test_balance_is_the_bridge_base_plus_own_pending_changes(tmp_path: Path) -> None:
    s = stocked(tmp_path)
    upsert(s, id="u1", name="Ann", points=40, visits=4)
    first = visit(s)
    assert s.member_facts("u1").member_points == 50
    second = spend(s)
    facts = s.member_facts("u1")
    assert (facts.member_points, facts.member_visits) == (20, 5)
    # The bridge has counted the visit (balance 50), not yet the spend: only the visit goes.
    upsert(s, id="u1", points=50, visits=5, applied=[first])
    assert s.member_facts("u1").member_points == 20
    # An upsert without `applied` sets the base and keeps every pending change.
    upsert(s, id="u1", points=100)
    assert s.member_facts("u1").member_points == 70
    upsert(s, id="u1", points=20, applied=[first, second, "someone-elses"])
    facts = s.member_facts("u1")
    assert (facts.member_points, facts.member_visits) == (20, 5)
    s.close()
    assert open_store(tmp_path).member_facts("u1").member_points == 20


def test_a_member_first_heard_of_from_the_bridge_is_created(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    upsert(s, id="u7", name="Bo", points=-20, visits=3, last_visit="2026-11-30T09:00:00Z")
    facts = s.facts_for(code("m", "u7"))
    assert (facts.member_points, facts.member_visits) == (-20, 3)  # overdrawn elsewhere
    assert facts.member_last_visit_at == datetime(2026, 11, 30, 9, tzinfo=UTC).timestamp()
    upsert(s, id="u7", last_visit="not a time")  # unreadable: the last good one stays
    upsert(s, id="u7", last_visit="9999-12-31T00:00:00Z")  # implausible: ignored too
    upsert(s, id="u7", last_visit="1999-12-31T00:00:00Z")
    assert (
        s.member_facts("u7").member_last_visit_at
        == datetime(2026, 11, 30, 9, tzinfo=UTC).timestamp()
    )


def test_pending_changes_are_bounded_oldest_first(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    ids = [visit(s, points=1) for _ in range(MAX_PENDING + 5)]
    assert s.member_facts("u1").member_points == MAX_PENDING
    upsert(s, id="u1", points=0, applied=ids[-10:])
    assert s.member_facts("u1").member_points == MAX_PENDING - 10


def test_a_member_of_the_previous_release_keeps_their_points(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.close()
    (tmp_path / DB_FILE).with_suffix(".journal").unlink(missing_ok=True)
    # A member document as the previous release wrote it (its totals, no pending list),
    # under the same stable document id.
    old = {"id": "u1", "name": "Ann", "points": 70, "visits": 7, "last_day": "d0", "last_at": 5.0}
    data = {"members": {str(_doc_id("u1", CodeType.MEMBER)): old}}
    (tmp_path / DB_FILE).write_text(json.dumps(data))
    s = open_store(tmp_path)
    facts = s.member_facts("u1")
    assert (facts.member_points, facts.member_visits, facts.member_last_at) == (70, 7, 5.0)
    counted = visit(s)
    assert s.member_facts("u1").member_points == 80
    upsert(s, id="u1", points=80, visits=8, applied=[counted])
    assert s.member_facts("u1").member_points == 80


def test_a_power_cut_never_loses_a_spend_nor_hands_a_voucher_out_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kiosk.journal as journal

    s = stocked(tmp_path)
    upsert(s, id="u1", points=100)
    spent = spend(s)
    real_write = journal.os.write

    def cut(fd: int, data: bytes) -> int:  # the power goes part-way through the write
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(5, "power cut")

    def dead(fd: int, length: int) -> None:  # and nothing runs after it
        raise OSError(5, "power cut")

    with monkeypatch.context() as m:
        m.setattr(journal.os, "write", cut)
        m.setattr(journal.os, "ftruncate", dead)
        with pytest.raises(DBError):
            spend(s)
    s.close()
    s = open_store(tmp_path)  # power back: the torn half-write is dropped
    assert [e.id for e in s.pending()][-1] == spent
    assert s.member_facts("u1").member_points == 70  # the spend that completed is kept
    held = s.pooled("voucher", "coffee")
    assert held is not None and held.id == "v2"  # v1 went with the completed spend
    # The bridge re-sends the handed-out voucher: it never comes back into the pool.
    again = {"kind": "voucher", "reward": "coffee", "codes": VOUCHERS}
    assert apply_command(s, Command(seq=s.last_cmd_seq + 1, name="pool.refill", data=again))
    assert s.vouchers_left() == {"coffee": 1}
    spend(s)
    assert s.pooled("voucher", "coffee") is None
    # A decision naming a code already taken records nothing at all.
    stale = decisions.redeem("u1", s.reward("coffee"), s.member_facts("u1"), held)
    outbox = s.outbox_size()
    with pytest.raises(DBError):
        s.record(stale, time.time())
    assert s.outbox_size() == outbox and s.member_facts("u1").member_points == 40
    reward = s.reward("coffee")
    assert reward is not None and reward.stock == 3  # two redeemed here


def test_handed_out_codes_and_ratings_are_forgotten_with_the_history(tmp_path: Path) -> None:
    now = time.time()
    s = KioskDB(tmp_path, store="s1", kiosk="k1", history_days=30)
    apply_command(s, Command(seq=1, name="rewards.set", data=CATALOGUE))
    refill = {"kind": "voucher", "reward": "coffee", "codes": VOUCHERS}
    apply_command(s, Command(seq=2, name="pool.refill", data=refill))
    upsert(s, id="u1", points=100)
    d = decisions.redeem(
        "u1", s.reward("coffee"), s.member_facts("u1"), s.pooled("voucher", "coffee")
    )
    s.record(d, now - 40 * 86400)
    s.record(decisions.review(RatingSubject("checkin", "e1"), 4), now - 40 * 86400)
    assert s.rated("e1")
    s.prune(now)
    assert not s.rated("e1")


def test_an_older_member_upsert_never_replaces_a_newer_one(tmp_path: Path) -> None:
    """Two bridge workers may answer out of order: version 5, then version 3."""
    s = open_store(tmp_path)
    first, second = visit(s), visit(s)
    upsert(s, id="u1", points=60, visits=6, applied=[first], version=5)
    assert s.member_facts("u1").member_points == 70  # 60 + the visit not yet counted
    upsert(s, id="u1", points=40, visits=4, applied=[], version=3)  # applied, changes nothing
    facts = s.member_facts("u1")
    assert (facts.member_points, facts.member_visits) == (70, 7)
    assert s.last_cmd_seq == 2
    # Without a version, as before; the version applied last still holds.
    upsert(s, id="u1", points=100)
    assert s.member_facts("u1").member_points == 110
    s.close()
    s = open_store(tmp_path)
    upsert(s, id="u1", points=0, version=4)
    assert s.member_facts("u1").member_points == 110
    upsert(s, id="u1", points=90, applied=[second], version=6)
    assert s.member_facts("u1").member_points == 90


def test_pooled_vouchers_about_to_expire_are_skipped_and_expired_ones_dropped(
    tmp_path: Path,
) -> None:
    clock = [time.time()]
    s = KioskDB(tmp_path, store="s1", kiosk="k1", clock=lambda: clock[0])
    day, t0 = 86400, clock[0]
    assert apply_command(s, Command(seq=1, name="rewards.set", data=CATALOGUE))
    codes = [
        voucher("soon", t0 + 3 * day),  # not worth printing
        voucher("late", t0 + 200 * day),
        voucher("mid", t0 + 100 * day),
        voucher("gone", t0 - 60),  # expired before it arrived: never pooled
    ]
    refill = {"kind": "voucher", "reward": "coffee", "codes": codes}
    assert apply_command(s, Command(seq=2, name="pool.refill", data=refill))
    assert s.vouchers_left() == {"coffee": 2}
    held = s.pooled("voucher", "coffee")
    assert held is not None and held.id == "mid"  # used before it goes stale
    clock[0] = t0 + 95 * day  # "mid" is within a week of its expiry now
    held = s.pooled("voucher", "coffee")
    assert held is not None and held.id == "late"
    clock[0] = t0 + 150 * day
    assert s.vouchers_left() == {"coffee": 1}
    assert sorted(d["id"] for d in s._storage.table_data("pool").values()) == ["late"]
    clock[0] = t0 + 195 * day
    assert s.vouchers_left() == {} and s.pooled("voucher", "coffee") is None


def test_handed_out_codes_are_remembered_while_they_are_valid(tmp_path: Path) -> None:
    """A kiosk sent its commands again from the start gets old refills again: a voucher
    or member code handed out months ago must not go back into the pool."""
    day = 86400
    clock = [time.time() - 40 * day]
    s = KioskDB(tmp_path, store="s1", kiosk="k1", history_days=30, clock=lambda: clock[0])
    t0 = clock[0]
    short, good = voucher("short", t0 + 10 * day), voucher("good", t0 + YEAR)
    cards = [{"id": "mc1", "code": ISSUER.code("m", "mc1"), "url": "https://b.example/m/1"}]
    refills = [
        ("rewards.set", CATALOGUE),
        ("pool.refill", {"kind": "voucher", "reward": "coffee", "codes": [short, good]}),
        ("pool.refill", {"kind": "member", "codes": cards}),
    ]
    for seq, (name, data) in enumerate(refills, start=1):
        assert apply_command(s, Command(seq=seq, name=name, data=data))
    upsert(s, id="u1", points=100)
    for _ in range(2):
        d = decisions.redeem(
            "u1", s.reward("coffee"), s.member_facts("u1"), s.pooled("voucher", "coffee")
        )
        assert d.event_type is EventType.POINTS_REDEEMED
        s.record(d, t0)
    joined = decisions.decide_join(
        "13800138000",
        secret="k",
        member_id="generated",
        join_url="https://j",
        known=False,
        pooled=s.pooled("member"),
    )
    assert joined is not None and joined.data["member_id"] == "mc1"
    s.record(joined, t0)
    clock[0] = t0 + 40 * day
    s.prune(clock[0])
    # "short" has expired: forgotten. "good" and the member's code are remembered.
    taken = sorted(d["id"] for d in s._storage.table_data("pool_taken").values())
    assert taken == ["good", "mc1"]
    again = [
        ("pool.refill", {"kind": "voucher", "reward": "coffee", "codes": [short, good]}),
        ("pool.refill", {"kind": "member", "codes": cards}),
    ]
    for name, data in again:
        assert apply_command(s, Command(seq=s.last_cmd_seq + 1, name=name, data=data))
    assert s.vouchers_left() == {} and s.pooled("member") is None


# --- visit cards: uses counted here and at other doors (issue 11) ------------------------


def use_card(s: KioskDB, c: Code) -> Decision:
    """One showing of a card at this kiosk: decided on the stored facts, then recorded."""
    d = decisions.decide(c, s.facts_for(c), decisions.Rules(), now=time.time(), today="")
    assert isinstance(d, Decision)
    s.record(d, time.time())
    return d


def card_used(s: KioskDB, seq: int, count: int | None) -> None:
    data: dict[str, object] = {"id": "vc1", "kiosk": "k2"}
    if count is not None:
        data["count"] = count
    assert apply_command(s, Command(seq=seq, name="coupon.used", data=data))


def test_the_bridges_count_raises_the_uses_known_here_never_lowers_them(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    card = code("c", "vc1", cp="card", uses=3)
    assert use_card(s, card).data["use"] == 1
    card_used(s, 1, 2)  # another door used it once more
    assert s.facts_for(card).coupon_uses == 2
    card_used(s, 2, None)  # a late command from before: absent count is one use
    card_used(s, 3, 1)
    assert s.facts_for(card).coupon_uses == 2
    assert use_card(s, card).data["use"] == 3
    refused = use_card(s, card)
    assert refused.reason is Reason.ALREADY_USED
    s.close()
    assert open_store(tmp_path).facts_for(card).coupon_uses == 3  # durable


def test_a_card_first_used_elsewhere_counts_from_the_bridge(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    card = code("c", "vc1", cp="card", uses=3)
    card_used(s, 1, 3)
    assert use_card(s, card).reason is Reason.ALREADY_USED
    s.close()


def test_two_doors_offline_can_overuse_a_card_and_every_use_is_recorded(tmp_path: Path) -> None:
    """Offline each door only knows its own uses: both let the card through, and every
    use goes to the bridge (which flags the overuse); its count then stops both."""
    a, b = open_store(tmp_path / "a"), KioskDB(tmp_path / "b", store="s1", kiosk="k2")
    card = code("c", "vc1", cp="card", uses=2)
    uses = [use_card(door, card).data.get("use") for door in (a, b, a, b)]
    assert uses == [1, 1, 2, 2]
    sent = [e for door in (a, b) for e in door.pending() if e.type == "coupon.redeemed"]
    assert len(sent) == 4
    card_used(a, 1, 4)
    card_used(b, 1, 4)
    assert all(use_card(door, card).reason is Reason.ALREADY_USED for door in (a, b))
    a.close()
    b.close()


def test_a_coupon_used_before_counts_existed_is_one_use(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    redeem(s, "vc1")
    card = code("c", "vc1", cp="card", uses=2)
    assert s.facts_for(card).coupon_uses == 1
    assert use_card(s, card).data["use"] == 2
    s.close()
