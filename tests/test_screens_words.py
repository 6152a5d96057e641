"""What the screens say, from a scanned code to the words, without a window.

A refusal must tell the person in front what to do next for *their* kind of code; a
pickup must make the locker number impossible to miss; a first visit is a welcome. Codes
are real signed codes, judged by `verify_code` and `decide` as the kiosk does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kiosk.config import UiSection
from kiosk.decisions import Facts, Preorder, Rules, decide
from kiosk.i18n import LANGUAGES, Messages
from kiosk.screens.outcome import (
    CODE_KINDS,
    NAME_COLUMNS,
    Outcome,
    ResultText,
    describe,
    shop_when,
    short_name,
)
from o2o_protocol.codes import verify_code
from o2o_protocol.messages import EventType, Reason
from tests.keys import Issuer

#: 2026-12-02 10:00 UTC: 18:00 in Shanghai.
NOW = 1796205600.0
SHANGHAI = ZoneInfo("Asia/Shanghai")
ISSUER = Issuer(clock=lambda: NOW)
RULES = Rules(zone=SHANGHAI)
ZH, EN = Messages("zh_CN"), Messages("en")


def scan(text: str, facts: Facts | None = None, **kw: Any) -> Outcome:
    """A scanned text as the result screen gets it."""
    result = verify_code(text, ISSUER.public_keys, store=ISSUER.store, now=NOW)
    d = decide(result, facts or Facts(), RULES, now=NOW, today="2026-12-02", text=text, **kw)
    assert not hasattr(d, "locker"), "an unlock, not an outcome"
    reason = d.reason.value if d.reason is not None else None  # type: ignore[union-attr]
    return Outcome(d.event_type, reason, dict(d.data))  # type: ignore[union-attr]


def both(outcome: Outcome) -> tuple[ResultText, ResultText]:
    return describe(outcome, ZH), describe(outcome, EN)


def test_already_used_says_what_was_used() -> None:
    coupon = scan(ISSUER.code("c", "cp1"), Facts(coupon_used_at="2026-12-01T10:00"))
    reservation = scan(ISSUER.code("r", "rv1"), Facts(reservation_arrived_at="t"))
    picked = Preorder("order-pk1", status="picked_up")
    pickup = scan(ISSUER.code("p", "pk1"), Facts(preorder=picked))
    card = scan(ISSUER.code("c", "vc1", uses=10), Facts(coupon_uses=10, coupon_used_at="t"))
    assert {o.reason for o in (coupon, reservation, pickup, card)} == {"already_used"}
    for m in (ZH, EN):
        coupon_words = describe(coupon, m)
        assert coupon_words.detail == m.get("reason.already_used.coupon.detail")
        for other in (reservation, pickup):
            text = describe(other, m)
            assert coupon_words.title != text.title and coupon_words.detail != text.detail
        assert "10" in describe(card, m).detail
    assert "签到" in describe(reservation, ZH).title and "取走" in describe(pickup, ZH).title
    assert "checked in" in describe(reservation, EN).title
    assert "picked up" in describe(pickup, EN).title


def test_expired_tells_a_member_to_refresh_and_a_coupon_holder_what_can_help() -> None:
    old = {"exp": int(NOW) - 60, "iat": int(NOW) - 3600}
    member = scan(ISSUER.code("m", "mem-1", **old))
    coupon = scan(ISSUER.code("c", "cp1", **old))
    assert member.reason == coupon.reason == "expired"
    zh_member, en_member = both(member)
    zh_coupon, en_coupon = both(coupon)
    assert "刷新" in zh_member.detail and "Refresh" in en_member.detail
    # Refreshing a coupon cannot help: staff or a new one online can.
    assert "刷新" not in zh_coupon.detail and "refresh" not in en_coupon.detail.lower()
    assert "店员" in zh_coupon.detail and "staff" in en_coupon.detail
    assert "new one online" in en_coupon.detail and "在线" in zh_coupon.detail


def test_wrong_store_names_the_store_the_code_is_for() -> None:
    outcome = scan(ISSUER.code("c", "cp1", store="s-jingan"))
    assert outcome.reason == "wrong_store" and outcome.data["claimed_store"] == "s-jingan"
    zh, en = both(outcome)
    assert "s-jingan" in zh.detail and "s-jingan" in en.detail


def test_not_yet_valid_says_from_when_in_shop_time() -> None:
    # Valid from 2026-12-24 10:30 UTC: 18:30 on Thursday 24 December in Shanghai.
    start = int(datetime(2026, 12, 24, 10, 30, tzinfo=UTC).timestamp())
    outcome = scan(ISSUER.code("c", "xmas", nbf=start, exp=start + 86400))
    assert outcome.reason == "not_yet_valid"
    assert outcome.data["valid_from"] == "2026-12-24T18:30"
    zh, en = both(outcome)
    assert zh.detail == "12月24日 周四 18:30 起可以使用"
    assert en.detail == "You can use it from Thu 24 Dec, 18:30"
    assert zh.wait and en.wait and not zh.ok


def test_order_not_ready_is_amber_with_what_to_do_and_a_forgery_is_red() -> None:
    pending = Preorder("order-pk1", status="pending")
    not_ready = scan(ISSUER.code("p", "pk1"), Facts(preorder=pending))
    forged = scan(Issuer(store=ISSUER.store).code("p", "pk1"))
    assert (not_ready.reason, forged.reason) == ("order_not_ready", "unknown_key")
    for m in (ZH, EN):
        wait, cross = describe(not_ready, m), describe(forged, m)
        assert wait.wait and not wait.ok and wait.detail
        assert not cross.wait and not cross.ok
    assert "几分钟" in describe(not_ready, ZH).detail
    assert "few minutes" in describe(not_ready, EN).detail


def test_every_reason_and_code_type_has_its_own_words_in_both_languages() -> None:
    for language in LANGUAGES:
        m = Messages(language)
        for reason in Reason:
            for kind in ("", *CODE_KINDS):
                data = {"reason": reason.value, **({"code_type": kind} if kind else {})}
                text = describe(Outcome(EventType.SCAN_REJECTED, reason.value, data), m)
                assert not text.ok and text.title and text.detail, (language, reason, kind)
                assert "{" not in text.title + text.detail, (language, reason, kind)
                assert text.title != m.get("reason.other.title"), (language, reason)


def test_a_first_visit_is_a_welcome_not_a_welcome_back() -> None:
    def checkin(visits: int, counted: bool = True) -> Outcome:
        data = {"member_id": "m", "name": "小明", "visits": visits, "counted": counted}
        return Outcome(EventType.CHECKIN, None, {**data, "points_earned": 10, "points": 10})

    first_zh, first_en = both(checkin(1))
    assert first_zh.title == "欢迎光临，小明！" and first_en.title == "Welcome, 小明!"
    assert "回来" not in first_zh.title + first_zh.extra
    assert "back" not in first_en.title + first_en.extra
    assert first_zh.extra == "首次光临，感谢您的到来"
    again_zh, again_en = both(checkin(2))
    assert again_zh.title == "欢迎回来，小明！" and again_en.title == "Welcome back, 小明!"
    assert again_en.extra == "Visit number 2"


def test_a_long_name_is_shortened() -> None:
    assert short_name("王小明") == "王小明"
    long_zh, long_en = "欧阳" * 30, "Maximiliana " * 5
    for name in (long_zh, long_en):
        short = short_name(name)
        assert short.endswith("…") and name.startswith(short[:-1])
    assert len(short_name(long_zh)) <= NAME_COLUMNS // 2
    assert len(short_name(long_en)) <= NAME_COLUMNS
    data = {"member_id": "m", "name": long_en, "visits": 3, "points": 30}
    title = describe(Outcome(EventType.CHECKIN, None, data), EN).title
    assert title == f"Welcome back, {short_name(long_en)}!"


def test_the_locker_number_is_the_big_thing_and_the_door_is_mentioned() -> None:
    opened = Outcome(EventType.PICKUP_OPENED, None, {"locker": 12, "order": "A-7"})
    zh, en = both(opened)
    assert zh.big == en.big == "12"
    assert "关好柜门" in zh.detail and "close the door" in en.detail
    unsure = Outcome(EventType.PICKUP_OPENED, None, {"locker": 3, "confirmed": False})
    assert describe(unsure, EN).big == "3" and "staff" in describe(unsure, EN).detail


def test_the_start_screen_lists_pickup_codes_too() -> None:
    assert ZH.get("start.hint_detail").split(" · ") == ["会员码", "优惠券", "预约码", "取货码"]
    assert EN.get("start.hint_detail").endswith("Pickup code")


def test_shop_when_reads_only_what_it_understands() -> None:
    assert shop_when("2026-01-05T09:05", EN) == "Mon 5 Jan, 09:05"
    assert shop_when("2026-01-05T09:05", ZH) == "1月5日 周一 09:05"
    assert shop_when("soon", EN) == "" and shop_when("", ZH) == ""


def test_a_refusal_stays_longer_than_a_success_by_default() -> None:
    ui = UiSection()
    assert ui.refusal_s == 10.0 and ui.result_s == 6.0
    with pytest.raises(ValueError):
        UiSection(refusal_s=0)
