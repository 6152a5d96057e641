"""The kiosk's local database: outcomes durable before they are shown, acks empty the outbox,
power cuts never corrupt it, and old history goes away while un-acked events stay."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kiosk.commands import apply_command
from kiosk.decisions import Decision
from kiosk.effects import CodeUsed, MemberVisit, PreorderChange
from kiosk.localdb import DB_FILE, DBError, KioskDB
from o2o_protocol.codes import Code, CodeType, verify_code
from o2o_protocol.messages import Command, EventType
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
