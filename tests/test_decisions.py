"""The pure decisions: what a customer at the door gets for each kind of code."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from kiosk.decisions import Decision, Facts, Rules, Unlock, shop_day
from kiosk.decisions import decide as decide_any
from kiosk.effects import CodeUsed, MemberVisit, NewMember, PreorderChange
from o2o_protocol.codes import Code, CodeType, Rejected, verify_code
from o2o_protocol.messages import EventType, Reason
from tests.keys import Issuer

NOW = time.time()
ISSUER = Issuer(clock=lambda: NOW)
RULES = Rules(points_per_visit=10)


def code(t: str, id: str, **fields: object) -> Code:
    result = verify_code(ISSUER.code(t, id, **fields), ISSUER.public_keys, store="s1", now=NOW)
    assert isinstance(result, Code)
    return result


def decide(*args: Any, **kw: Any) -> Decision:
    """A scan that is decided at once (no locker to open first)."""
    d = decide_any(*args, **kw)
    assert isinstance(d, Decision)
    return d


def test_member_checkin_earns_points_and_names_the_member() -> None:
    d = decide(
        code("m", "u1", n="Ann"),
        Facts(member_visits=2, member_points=20),
        RULES,
        now=NOW,
        today="2026-11-26",
    )
    assert d.event_type is EventType.CHECKIN and d.accepted
    assert d.data["name"] == "Ann" and d.data["visits"] == 3 and d.data["points"] == 30
    visit = d.effect(MemberVisit)
    assert visit is not None and visit.points == 10  # earned: pending until the bridge counts it


def test_once_per_day_counts_the_second_visit_without_points() -> None:
    rules = Rules(points_per_visit=10, once_per_day=True)
    facts = Facts(member_visits=1, member_points=10, member_last_day="2026-11-26")
    d = decide(code("m", "u1"), facts, rules, now=NOW, today="2026-11-26")
    assert d.event_type is EventType.CHECKIN
    assert (
        d.data["points_earned"] == 0
        and d.data["counted"] is False
        and d.effect(MemberVisit) is None
    )
    d2 = decide(code("m", "u1"), facts, rules, now=NOW, today="2026-11-27")
    assert d2.data["points_earned"] == 10 and d2.data["visits"] == 2


def test_once_a_day_counts_days_in_the_shops_time_zone() -> None:
    """A visit at another door at 00:30 in Shanghai and one here at 01:30 are the same
    day for the shop, though two days in UTC (and on a kiosk whose clock is set to it)."""
    shanghai = ZoneInfo("Asia/Shanghai")
    rules = Rules(points_per_visit=10, once_per_day=True, checkin_cooldown_min=0, zone=shanghai)
    visit = datetime(2026, 12, 2, 0, 30, tzinfo=shanghai).timestamp()
    token = Issuer(key=ISSUER.key, clock=lambda: visit).code("m", "u1")
    member = verify_code(token, ISSUER.public_keys, store="s1", now=visit)
    facts = Facts(member_last_visit_at=visit)

    def counted(at: float) -> bool:
        d = decide(member, facts, rules, now=at, today=shop_day(at, shanghai))
        return bool(d.data["counted"])

    assert not counted(visit + 3600)  # 01:30 the same shop day
    assert counted(visit + 86400 - 1200)  # 00:10 the next day


def test_coupon_redeems_once() -> None:
    c = code("c", "cp1", cp="spring", v="¥10 off")
    first = decide(c, Facts(), RULES, now=NOW, today="d")
    assert first.event_type is EventType.COUPON_REDEEMED and first.effect(CodeUsed) == CodeUsed(
        "cp1", CodeType.COUPON, exp=c.expires
    )
    assert first.data == {"coupon_id": "cp1", "campaign": "spring", "value": "¥10 off"}
    again = decide(c, Facts(coupon_used_at="2026-11-26T10:00:00.000Z"), RULES, now=NOW, today="d")
    assert again.event_type is EventType.SCAN_REJECTED and again.reason is Reason.ALREADY_USED
    assert again.effects == () and again.data["code_id"] == "cp1"


def test_revoked_code_is_refused_whatever_its_type() -> None:
    for t in "mcrs":
        d = decide(code(t, "x"), Facts(revoked=True), RULES, now=NOW, today="d")
        assert d.reason is Reason.REVOKED


def test_rejection_carries_its_reason_and_claimed_id() -> None:
    stranger = Issuer()
    text = stranger.code("c", "stolen")
    result = verify_code(text, ISSUER.public_keys, store="s1", now=NOW)
    assert isinstance(result, Rejected)
    d = decide(result, Facts(), RULES, now=NOW, today="d", text=text)
    assert d.event_type is EventType.SCAN_REJECTED
    assert d.data["reason"] == "unknown_key" and d.data["claimed_id"] == "stolen"


def test_reservation_timing() -> None:
    def timing(offset_min: float) -> str:
        c = code("r", "rv1", at=int(NOW - offset_min * 60), sv="haircut")
        d = decide(
            c, Facts(), Rules(reservation_early_min=10, reservation_late_min=5), now=NOW, today="d"
        )
        assert d.event_type is EventType.RESERVATION_ARRIVED and d.data["service"] == "haircut"
        return str(d.data["timing"])

    assert timing(0) == "on_time"
    assert timing(-30) == "early"
    assert timing(20) == "late"


def test_pickup_without_a_known_preorder_is_unknown_order() -> None:
    d = decide(code("p", "pk1", o="A-17"), Facts(), RULES, now=NOW, today="d")
    assert d.reason is Reason.UNKNOWN_ORDER


def test_staff_code_logs_in() -> None:
    d = decide(code("s", "st1", n="Bo"), Facts(), RULES, now=NOW, today="d")
    assert d.event_type is EventType.STAFF_LOGIN and d.data["staff_id"] == "st1"


# --- pickups, loading, joining ------------------------------------------------------------

from kiosk.decisions import (  # noqa: E402
    Preorder,
    after_unlock,
    decide_join,
    loaded,
    normalise_phone,
    phone_hash,
    pickup_completed,
)


def pickup(
    status: str | None,
    *,
    locker: int | None = None,
    staff: bool = False,
    free: tuple[tuple[int, str], ...] = (),
    size: str = "M",
) -> Decision | Unlock:
    pre = None if status is None else Preorder("A1", status, size, "Li", locker)
    return decide_any(
        code("p", "pk1", o="A1"),
        Facts(preorder=pre, free_lockers=free),
        RULES,
        now=NOW,
        today="d",
        staff=staff,
    )


def test_pickup_reasons() -> None:
    assert pickup(None).reason is Reason.UNKNOWN_ORDER
    assert pickup("cancelled").reason is Reason.UNKNOWN_ORDER
    assert pickup("pending").reason is Reason.ORDER_NOT_READY
    assert pickup("picked_up", locker=None).reason is Reason.ALREADY_USED


def test_ready_order_opens_its_locker_then_completes() -> None:
    intent = pickup("ready", locker=3)
    assert isinstance(intent, Unlock) and intent.locker == 3
    opened = after_unlock(intent, True)
    assert isinstance(opened, Decision) and opened.event_type is EventType.PICKUP_OPENED
    assert opened.effect(PreorderChange) == PreorderChange("A1", "opened", 3)
    done = pickup_completed("A1", 3)
    assert done.event_type is EventType.PICKUP_COMPLETED
    assert done.effect(PreorderChange) == PreorderChange("A1", "picked_up", None)


def test_door_that_does_not_open_fails_and_keeps_the_order_ready() -> None:
    intent = pickup("ready", locker=3)
    assert isinstance(intent, Unlock)
    failed = after_unlock(intent, False, "door_not_opened")
    assert failed is not None and failed.event_type is EventType.PICKUP_FAILED
    assert failed.data["reason"] == "door_not_opened" and failed.effects == ()


def test_staff_load_picks_the_smallest_free_locker_that_fits() -> None:
    free = ((1, "S"), (2, "L"), (3, "M"))
    intent = pickup("pending", staff=True, free=free, size="M")
    assert isinstance(intent, Unlock) and intent.locker == 3
    done = loaded(intent)
    assert done.event_type is EventType.LOCKER_LOADED
    assert done.effect(PreorderChange) == PreorderChange("A1", "ready", 3)
    big = pickup("pending", staff=True, free=((1, "S"), (3, "M")), size="L")
    assert isinstance(big, Decision) and big.reason is Reason.NO_LOCKER_FREE
    jam = after_unlock(intent, False, "door_not_opened")
    assert jam is not None and jam.event_type is EventType.LOCKER_FAULT


def test_code_types_a_kiosk_does_not_take_are_not_allowed() -> None:
    rules = Rules(accept=frozenset({CodeType.MEMBER}))
    d = decide(code("p", "pk1", o="A1"), Facts(), rules, now=NOW, today="d")
    assert d.reason is Reason.NOT_ALLOWED


def test_join_hashes_the_phone_and_links_back_online() -> None:
    d = decide_join(
        "138 0013-8000",
        secret="s3cret",
        member_id="new1",
        join_url="https://shop.example/join",
        known=False,
    )
    assert d is not None and d.event_type is EventType.MEMBER_JOINED
    assert "13800138000" not in str(d.data)
    assert d.data["join_url"] == "https://shop.example/join?j=new1"
    assert d.effect(NewMember) == NewMember("new1", d.data["phone_hash"])
    assert decide_join("hello", secret="s3cret", member_id="x", join_url="", known=False) is None
    # Keyed: without the shop's secret, the hash of a number cannot be looked up.
    assert phone_hash("13800138000", "s3cret") != phone_hash("13800138000", "other")
    assert normalise_phone("+86 138-0013-8000") == "+8613800138000"


def test_member_shown_again_within_the_cooldown_earns_nothing() -> None:
    rules = Rules(points_per_visit=10, checkin_cooldown_min=60)
    soon = Facts(member_visits=1, member_points=10, member_last_at=NOW - 600)
    d = decide(code("m", "u1"), soon, rules, now=NOW, today="d")
    assert (
        d.data["counted"] is False
        and d.data["points_earned"] == 0
        and d.effect(MemberVisit) is None
    )
    later = Facts(member_visits=1, member_points=10, member_last_at=NOW - 7200)
    assert decide(code("m", "u1"), later, rules, now=NOW, today="d").data["visits"] == 2


def test_a_reservation_arrives_once() -> None:
    c = code("r", "rv9", at=int(NOW), sv="haircut")
    first = decide(c, Facts(), RULES, now=NOW, today="d")
    assert first.event_type is EventType.RESERVATION_ARRIVED
    assert first.effect(CodeUsed) == CodeUsed("rv9", CodeType.RESERVATION, exp=c.expires)
    again = decide(
        c, Facts(reservation_arrived_at="2026-11-26T10:00:00.000Z"), RULES, now=NOW, today="d"
    )
    assert again.reason is Reason.ALREADY_USED


def test_commands_become_the_same_typed_changes() -> None:
    from kiosk.commands import changes_for
    from kiosk.effects import CodeRevoked, PreorderCancelled, PreorderDetails, RemoteOpenQueued
    from o2o_protocol.messages import Command

    at = "2027-01-15T08:00:00.000Z"
    revoke = Command(seq=1, name="code.revoke", data={"id": "c9"})
    assert changes_for(revoke, 1_800_000_000.0) == (CodeRevoked("c9", at),)
    upsert = Command(seq=2, name="preorder.upsert", data={"order": "A1", "size": "l"})
    assert changes_for(upsert, NOW) == (PreorderDetails("A1", "L"),)
    cancel = Command(seq=3, name="preorder.cancel", data={"order": "A1"})
    assert changes_for(cancel, NOW) == (PreorderCancelled("A1"),)
    opens = Command(seq=4, name="locker.open", data={"locker": 1})
    # A device action, kept durably until the locker coordinator has run it.
    assert changes_for(opens, NOW) == (RemoteOpenQueued(4, 1, "bridge", None),)


def test_a_remote_open_past_its_expiry_opens_nothing() -> None:
    from kiosk.decisions import remote_open_expired

    assert remote_open_expired(int(NOW) - 1, NOW)
    assert not remote_open_expired(int(NOW) + 60, NOW)
    assert not remote_open_expired(None, NOW)


# --- campaign codes: hours in the shop's zone, visit cards, activities (issue 11) --------

SHANGHAI = ZoneInfo("Asia/Shanghai")
TUE_FRI_AFTERNOONS = [{"days": [2, 3, 4, 5], "from": "14:00", "to": "17:00"}]
FRIDAY_NIGHT = [{"days": [5], "from": "22:00", "to": "02:00"}]


def at(text: str) -> float:
    """Unix seconds of a wall-clock time in Shanghai ("2026-12-01 14:00" is a Tuesday)."""
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp()


def scan_at(when: str, c: Code, facts: Facts | None = None) -> Decision:
    return decide(c, facts or Facts(), Rules(zone=SHANGHAI), now=at(when), today=when[:10])


def test_hours_are_kept_to_the_minute_in_the_shops_zone() -> None:
    c = code("c", "fs1", cp="flash", cn="下午茶", ck="flash_sale", v="半价", hrs=TUE_FRI_AFTERNOONS)
    inside = ["2026-12-01 14:00", "2026-12-01 16:59:59", "2026-12-04 15:00"]
    outside = ["2026-12-01 13:59:59", "2026-12-01 17:00", "2026-11-30 15:00", "2026-12-05 15:00"]
    for when in inside:
        d = scan_at(when, c)
        assert d.event_type is EventType.COUPON_REDEEMED and d.effect(CodeUsed), when
    for when in outside:
        d = scan_at(when, c)
        assert d.reason is Reason.OUTSIDE_HOURS, when
        assert d.data["hours"] == TUE_FRI_AFTERNOONS and d.data["code_id"] == "fs1"
        assert d.effects == ()  # nothing used up: the customer comes back in the hours
    # The same instant is 06:30 in UTC: a kiosk set to another zone reads other hours.
    utc = decide(c, Facts(), Rules(zone=ZoneInfo("UTC")), now=at("2026-12-01 14:30"), today="")
    assert utc.reason is Reason.OUTSIDE_HOURS


def test_a_window_past_midnight_covers_the_small_hours_after_its_day() -> None:
    c = code("c", "n1", cp="late", hrs=FRIDAY_NIGHT, v="¥5")
    for when in ["2026-12-04 22:00", "2026-12-05 00:30", "2026-12-05 01:59:59"]:
        assert scan_at(when, c).accepted, when
    for when in ["2026-12-04 21:59:59", "2026-12-05 02:00", "2026-12-04 01:00", "2026-12-05 22:30"]:
        assert scan_at(when, c).reason is Reason.OUTSIDE_HOURS, when


def test_a_campaign_coupon_names_its_campaign_kind_and_value() -> None:
    c = code("c", "g1", cp="spring", cn="春季团购", ck="group_buy", v="双人套餐")
    d = scan_at("2026-12-01 12:00", c)
    assert d.data == {
        "coupon_id": "g1",
        "campaign": "spring",
        "campaign_name": "春季团购",
        "kind": "group_buy",
        "value": "双人套餐",
    }


def test_an_old_coupon_is_judged_exactly_as_before() -> None:
    c = code("c", "old", cp="spring", v="¥10 off")
    d = scan_at("2026-11-30 03:00", c)
    assert d.data == {"coupon_id": "old", "campaign": "spring", "value": "¥10 off"}
    assert d.effects == (CodeUsed("old", CodeType.COUPON, exp=c.expires),)
    again = scan_at("2026-11-30 03:00", c, Facts(coupon_used_at="t", coupon_uses=1))
    assert again.reason is Reason.ALREADY_USED and again.data["detail"] == "used at t"


def test_a_visit_card_is_used_n_times_then_refused() -> None:
    c = code("c", "vc1", cp="card", cn="三次卡", ck="visit_card", v="咖啡", uses=3)
    for used in range(3):
        facts = Facts(coupon_used_at="t" if used else None, coupon_uses=used)
        d = scan_at("2026-12-01 10:00", c, facts)
        assert d.event_type is EventType.COUPON_REDEEMED
        assert (d.data["use"], d.data["uses"], d.data["kind"]) == (used + 1, 3, "visit_card")
        assert d.effect(CodeUsed) == CodeUsed("vc1", CodeType.COUPON, exp=c.expires, count=used + 1)
    d = scan_at("2026-12-01 10:00", c, Facts(coupon_used_at="t", coupon_uses=3))
    assert d.reason is Reason.ALREADY_USED and d.effects == ()
    # The bridge's count (uses at other doors) is what the kiosk sees: refused as well.
    assert scan_at("2026-12-01 10:00", c, Facts(coupon_used_at="t", coupon_uses=5)).reason is (
        Reason.ALREADY_USED
    )


def test_a_used_up_card_outside_hours_says_it_is_used_up() -> None:
    c = code("c", "vc2", cp="card", uses=2, hrs=TUE_FRI_AFTERNOONS)
    used_up = scan_at("2026-11-30 10:00", c, Facts(coupon_used_at="t", coupon_uses=2))
    assert used_up.reason is Reason.ALREADY_USED
    assert scan_at("2026-11-30 10:00", c, Facts(coupon_uses=1)).reason is Reason.OUTSIDE_HOURS


def test_an_activity_ticket_names_its_activity() -> None:
    ticket = code("r", "t1", ac="yoga-12", sv="Yoga", at=int(NOW))
    d = decide(ticket, Facts(), RULES, now=NOW, today="")
    assert d.event_type is EventType.RESERVATION_ARRIVED
    assert d.data["activity"] == "yoga-12" and d.data["service"] == "Yoga"
    plain = decide(code("r", "r1", at=int(NOW)), Facts(), RULES, now=NOW, today="")
    assert "activity" not in plain.data
