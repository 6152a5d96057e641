"""Members, rewards and ratings as pure decisions and slips: what a member is offered and
charged, when a visit counts across doors, what a rating records, what the slip says."""

from __future__ import annotations

import time

import pytest

from kiosk.decisions import Decision, Facts, Rules, decide, decide_join, redeem, review
from kiosk.effects import MemberVisit, NewMember, PointsSpent, PoolCodeTaken, Rated, StockTaken
from kiosk.loyalty import RatingSubject, rating_subject
from kiosk.receipts import receipt_for
from o2o_protocol.codes import Code, verify_code
from o2o_protocol.messages import EventType, PoolCode, Reason, Reward
from o2o_protocol.timeutil import rfc3339
from tests.keys import Issuer

NOW = time.time()
ISSUER = Issuer(clock=lambda: NOW)
COFFEE = Reward(id="coffee", name="咖啡", name_en="Coffee", points=30)
VOUCHER = PoolCode(id="v1", code=ISSUER.code("c", "v1", cp="reward:coffee", v="咖啡"))


def member(id: str = "u1") -> Code:
    result = verify_code(ISSUER.code("m", id, n="Ann"), ISSUER.public_keys, store="s1", now=NOW)
    assert isinstance(result, Code)
    return result


DEFAULT_RULES = Rules(points_per_visit=10)


def checkin(facts: Facts, rules: Rules = DEFAULT_RULES) -> Decision:
    d = decide(member(), facts, rules, now=NOW, today=time.strftime("%Y-%m-%d"))
    assert isinstance(d, Decision) and d.event_type is EventType.CHECKIN
    return d


def test_redeem_with_enough_points_spends_them_and_takes_the_voucher() -> None:
    d = redeem("u1", COFFEE, Facts(member_points=45), VOUCHER)
    assert d.event_type is EventType.POINTS_REDEEMED and d.accepted
    assert d.data == {
        "member_id": "u1",
        "reward_id": "coffee",
        "reward": "咖啡",
        "points": 30,
        "balance": 15,
        "voucher_id": "v1",
        "voucher_code": VOUCHER.code,
    }
    assert d.effect(PointsSpent) == PointsSpent("u1", 30)
    assert d.effect(PoolCodeTaken) == PoolCodeTaken("voucher", "v1")
    assert d.effect(StockTaken) == StockTaken("coffee")


def test_redeem_with_too_few_points_is_refused_and_changes_nothing() -> None:
    d = redeem("u1", COFFEE, Facts(member_points=29), VOUCHER)
    assert d.reason is Reason.INSUFFICIENT_POINTS and d.effects == ()
    assert d.data == {
        "reason": "insufficient_points",
        "member_id": "u1",
        "reward_id": "coffee",
        "points": 30,
        "balance": 29,
    }


def test_a_reward_that_cannot_be_printed_or_is_gone_is_not_allowed() -> None:
    rich = Facts(member_points=1000)
    no_voucher = redeem("u1", COFFEE, rich, None)
    sold_out = redeem("u1", COFFEE.model_copy(update={"stock": 0}), rich, VOUCHER)
    unknown = redeem("u1", None, rich, None, reward_id="caviar")
    for d in (no_voucher, sold_out, unknown):
        assert d.reason is Reason.NOT_ALLOWED and d.effects == ()
    assert unknown.data["reward_id"] == "caviar"


def test_own_pending_spends_count_against_the_next_redeem() -> None:
    """The balance the kiosk decides on already has its own spends taken off: two
    rewards of 30 cannot both come out of a balance of 45."""
    first = redeem("u1", COFFEE, Facts(member_points=45), VOUCHER)
    after = 45 + sum(-e.points for e in first.effects if isinstance(e, PointsSpent))
    second = redeem("u1", COFFEE, Facts(member_points=after), PoolCode(id="v2", code="x"))
    assert second.reason is Reason.INSUFFICIENT_POINTS and second.data["balance"] == 15


def test_a_visit_at_another_door_starts_the_cooldown_here() -> None:
    rules = Rules(points_per_visit=10, checkin_cooldown_min=60)
    elsewhere = checkin(Facts(member_points=50, member_last_visit_at=NOW - 600), rules)
    assert elsewhere.data["counted"] is False and elsewhere.effect(MemberVisit) is None
    assert elsewhere.data["points"] == 50
    # An older visit elsewhere does not shorten this kiosk's own cooldown either.
    both = Facts(member_last_at=NOW - 300, member_last_visit_at=NOW - 7200)
    assert checkin(both, rules).data["counted"] is False
    long_ago = checkin(Facts(member_points=50, member_last_visit_at=NOW - 7200), rules)
    assert long_ago.data["counted"] is True and long_ago.data["points"] == 60


def test_once_a_day_holds_across_doors() -> None:
    rules = Rules(points_per_visit=10, once_per_day=True, checkin_cooldown_min=0)
    today_elsewhere = Facts(member_last_day="2000-01-01", member_last_visit_at=NOW - 1)
    assert checkin(today_elsewhere, rules).data["counted"] is False


def test_checkin_earns_a_pending_change_of_the_points_earned() -> None:
    d = checkin(Facts(member_points=20, member_visits=2))
    assert (d.data["points"], d.data["visits"]) == (30, 3)
    visit = d.effect(MemberVisit)
    assert visit is not None and visit.points == 10


def test_rating_subjects_of_visits_pickups_and_arrivals() -> None:
    assert rating_subject("checkin", "e1", {"member_id": "u1", "counted": False}) == (
        RatingSubject("checkin", "e1", member_id="u1")
    )
    for kind in ("pickup.opened", "pickup.completed"):
        assert rating_subject(kind, "e2", {"order": "A1"}) == RatingSubject(
            "pickup", "e2", order="A1"
        )
    assert rating_subject("reservation.arrived", "e3", {"reservation_id": "r1"}) == (
        RatingSubject("reservation", "e3", reservation_id="r1")
    )
    assert rating_subject("coupon.redeemed", "e4", {}) is None
    assert rating_subject("scan.rejected", "e5", {"reason": "expired"}) is None


def test_review_records_a_rating_once() -> None:
    subject = RatingSubject("pickup", "e2", order="A1")
    d = review(subject, 5)
    assert d.event_type is EventType.REVIEW_SUBMITTED
    assert d.data == {"rating": 5, "subject": "pickup", "event": "e2", "order": "A1"}
    assert d.effect(Rated) == Rated("e2")
    again = review(subject, 4, rated=True)
    assert again.reason is Reason.ALREADY_USED and again.effects == ()
    for bad in (0, 6, -1):
        with pytest.raises(ValueError):
            review(subject, bad)


def test_join_takes_a_pooled_member_code_and_its_page() -> None:
    card = PoolCode(id="mc7", code="token", url="https://b.example/m/token")
    d = decide_join(
        "13800138000",
        secret="s",
        member_id="generated",
        join_url="https://shop.example/join",
        known=False,
        pooled=card,
        referrer="u1",
    )
    assert d is not None and d.data["member_id"] == "mc7"
    assert d.data["page_url"] == "https://b.example/m/token" and d.data["referrer"] == "u1"
    assert d.effect(NewMember) == NewMember("mc7", d.data["phone_hash"])
    assert d.effect(PoolCodeTaken) == PoolCodeTaken("member", "mc7")
    # A member already known keeps their id, and the pool its code.
    known = decide_join(
        "13800138000", secret="s", member_id="u9", join_url="", known=True, pooled=card
    )
    assert known is not None and known.data["member_id"] == "u9" and known.effects == ()
    # An empty pool: a generated id and the shop's sign-up link, as before.
    plain = decide_join(
        "13800138000", secret="s", member_id="g1", join_url="https://j", known=False
    )
    assert plain is not None and plain.data["join_url"] == "https://j?j=g1"
    assert "page_url" not in plain.data and plain.effect(PoolCodeTaken) is None


def test_voucher_slip_shows_reward_code_validity_and_balance() -> None:
    exp = int(NOW) + 365 * 86400
    code = ISSUER.code("c", "v9", cp="reward:coffee", v="Coffee", exp=exp)
    data = {"reward": "Coffee", "points": 30, "balance": 15, "voucher_code": code}
    slip = receipt_for("points.redeemed", data, language="en", ts=rfc3339(NOW))
    assert slip is not None and slip.title == "Reward voucher" and slip.qr == code
    assert "Reward: Coffee" in slip.lines and "Points left: 15" in slip.lines
    assert f"Valid until: {time.strftime('%Y-%m-%d', time.localtime(exp))}" in slip.lines


def test_member_slips_carry_the_share_link_and_the_page() -> None:
    join = "https://shop.example/join"
    visit = {"member_id": "u1", "name": "Ann", "visits": 1, "points": 10, "points_earned": 10}
    slip = receipt_for("checkin", visit, language="en", join_url=join)
    assert slip is not None and f"Invite a friend: {join}?ref=u1" in slip.lines
    plain = receipt_for("checkin", visit, language="en")
    assert plain is not None and not any("Invite" in line for line in plain.lines)
    joined = {"member_id": "mc7", "page_url": "https://b.example/m/t", "join_url": f"{join}?j=mc7"}
    slip = receipt_for("member.joined", joined, language="en", join_url=join)
    assert slip is not None and slip.qr == "https://b.example/m/t"
    assert f"Invite a friend: {join}?ref=mc7" in slip.lines
