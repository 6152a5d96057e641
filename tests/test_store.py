"""The kiosk store: outcomes durable before they are shown, acks empty the outbox."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kiosk.decisions import Decision, MemberVisit
from kiosk.store import DB_FILE, KioskStore, StoreError
from o2o_protocol.codes import Code, verify_code
from o2o_protocol.messages import Command, EventType
from tests.keys import Issuer

ISSUER = Issuer()


def open_store(path: Path) -> KioskStore:
    return KioskStore(path, store="s1", kiosk="k1")


def coupon(id: str) -> Code:
    c = verify_code(ISSUER.code("c", id), ISSUER.public_keys, store="s1", now=time.time())
    assert isinstance(c, Code)
    return c


def test_recorded_outcome_survives_reopen_with_gapless_seq(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    ids = []
    for i in range(3):
        rec = s.record(
            Decision(EventType.COUPON_REDEEMED, {"coupon_id": f"c{i}"}, redeem_coupon=f"c{i}"),
            time.time(),
        )
        ids.append(rec.event.id)
    s.close()
    s2 = open_store(tmp_path)
    pending = s2.pending()
    assert [e.id for e in pending] == ids
    assert [e.seq for e in pending] == [1, 2, 3]
    assert s2.facts_for(coupon("c1")).coupon_used_at is not None
    assert s2.facts_for(coupon("zz")).coupon_used_at is None
    # The next event continues the sequence without a gap.
    assert s2.record(Decision(EventType.CHECKIN), time.time()).event.seq == 4


def test_ack_removes_only_named_events(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    events = [s.record(Decision(EventType.CHECKIN), time.time()).event for _ in range(5)]
    assert s.ack([events[1].id, events[3].id, "unknown"]) == 2
    assert [e.id for e in s.pending()] == [events[i].id for i in (0, 2, 4)]
    assert s.outbox_size() == 3


def test_member_visits_accumulate(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.record(Decision(EventType.CHECKIN, member_visit=MemberVisit("u1", "Ann", 1, 10, "d1")), 0)
    s.record(Decision(EventType.CHECKIN, member_visit=MemberVisit("u1", "Ann", 2, 20, "d2")), 0)
    m = verify_code(ISSUER.code("m", "u1"), ISSUER.public_keys, store="s1", now=time.time())
    assert isinstance(m, Code)
    facts = s.facts_for(m)
    assert (facts.member_visits, facts.member_points, facts.member_last_day) == (2, 20, "d2")


def test_commands_apply_once_and_in_order(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    revoke = Command(seq=1, name="code.revoke", data={"id": "c9"})
    assert s.apply_command(Command(seq=2, name="code.revoke", data={"id": "c8"})) is False
    assert s.apply_command(revoke) is True
    assert s.apply_command(revoke) is False
    assert s.last_cmd_seq == 1
    assert s.facts_for(coupon("c9")).revoked
    assert not s.facts_for(coupon("c8")).revoked
    s.close()
    assert open_store(tmp_path).last_cmd_seq == 1


def test_interrupted_write_leaves_the_last_good_state(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.record(Decision(EventType.CHECKIN), 0)
    s.close()
    # A power cut after writing the temporary file but before the rename.
    (tmp_path / DB_FILE).with_suffix(".tmp").write_text('{"outbox": {"1": {"trunc')
    s2 = open_store(tmp_path)
    assert s2.outbox_size() == 1


def test_damaged_store_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / DB_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="damaged"):
        open_store(tmp_path)


def test_store_file_is_plain_json_an_owner_can_inspect(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.record(Decision(EventType.CHECKIN, {"member_id": "u1"}), 0)
    data = json.loads((tmp_path / DB_FILE).read_text())
    (event,) = data["outbox"].values()
    assert event["type"] == "checkin" and event["data"] == {"member_id": "u1"}
