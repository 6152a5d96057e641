"""Members at the door, through the kiosk runtime with its real database, printer worker and
an ESC/POS printer on a pseudo-terminal: a check-in, the rewards on offer, a redeemed
voucher whose printed QR is a coupon the shop accepts once, ratings, and joining with a
member code from the pool."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from kiosk.commands import apply_command
from kiosk.config import KioskConfig
from kiosk.devices.serial_printer import SerialPrinter
from kiosk.effects import MemberUpdate
from kiosk.localdb import Recorded
from kiosk.loyalty import RewardChoice, rating_subject
from kiosk.runtime import KioskRuntime
from o2o_protocol.codes import Code, CodeType, verify_code
from o2o_protocol.messages import Command
from tests.keys import Issuer
from tests.test_kiosk_app import wait_for
from tests.test_printer import CUT, QR_STORE, FakePrinter

ISSUER = Issuer()
JOIN = "https://shop.example/join"


class Door:
    """A kiosk and the paper coming out of its printer."""

    def __init__(self, kiosk: KioskRuntime, paper: FakePrinter) -> None:
        self.kiosk, self.paper = kiosk, paper

    def command(self, command: str, **data: object) -> None:
        seq = self.kiosk.db.last_cmd_seq + 1
        assert apply_command(self.kiosk.db, Command(seq=seq, name=command, data=data))

    def slips(self, count: int) -> list[bytes]:
        """The first `count` slips printed (each ends in a cut), waiting for them."""
        wait_for(lambda: self.paper.printed().count(CUT) >= count, timeout=10)
        return self.paper.printed().split(CUT)[:count]


def printed_qr(slip: bytes) -> str | None:
    """The text of the QR code on a slip (GS ( k pL pH 1 P 0 <data>), as the printer got it."""
    at = slip.find(QR_STORE)
    while at >= 0 and slip[at + 5 : at + 8] != b"1P0":
        at = slip.find(QR_STORE, at + 1)
    if at < 0:
        return None
    size = int.from_bytes(slip[at + 3 : at + 5], "little") - 3
    return slip[at + 8 : at + 8 + size].decode()


def text_of(slip: bytes) -> str:
    return slip.decode("gb18030", errors="replace")


@pytest.fixture
def door(tmp_path: Path) -> Iterator[Door]:
    paper = FakePrinter()
    cfg = KioskConfig.model_validate(
        {
            "store": "s1",
            "kiosk": "k1",
            "data_dir": str(tmp_path / "data"),
            "keys": ISSUER.config_keys,
            "mqtt": {"url": "mqtt://127.0.0.1:9"},  # nobody there: the kiosk works offline
            "lockers": {"sim_close_after_s": 0.2},
            "ui": {"join_url": JOIN, "language": "en"},
            "rules": {"points_per_visit": 10, "checkin_cooldown_min": 60},
        }
    )
    printer = SerialPrinter(paper.path, codepage="gb18030", status_timeout_s=0.2)
    kiosk = KioskRuntime(cfg, printer=printer)
    kiosk.printer.start()
    try:
        yield Door(kiosk, paper)
    finally:
        kiosk.printer.stop()
        kiosk.lockers.close()
        kiosk.db.close()
        paper.close()


def vouchers(*ids: str, days: float = 365) -> list[dict[str, str]]:
    """Coffee vouchers as the bridge signs them, valid `days` from now."""
    exp = int(time.time() + days * 86400)
    return [
        {"id": i, "code": ISSUER.code("c", i, cp="reward:coffee", v="Coffee", exp=exp)} for i in ids
    ]


def test_checkin_offer_redeem_prints_a_voucher_the_shop_accepts_once(door: Door) -> None:
    k = door.kiosk
    rewards = [
        {"id": "coffee", "name": "咖啡", "name_en": "Coffee", "points": 30},
        {"id": "cake", "name": "蛋糕", "name_en": "Cake", "points": 50},
        {"id": "tea", "name": "茶", "points": 5, "stock": 0},
    ]
    door.command("rewards.set", rewards=rewards)
    door.command("pool.refill", kind="voucher", reward="coffee", codes=vouchers("v1", "v2"))
    door.command("pool.refill", kind="voucher", reward="tea", codes=[{"id": "t1", "code": "x"}])
    door.command("member.upsert", id="u1", name="Ann", points=25, visits=2)

    visit = k.scan(ISSUER.code("m", "u1", n="Ann"))
    assert isinstance(visit, Recorded) and visit.event.data["points"] == 35
    checkin_slip = text_of(door.slips(1)[0])
    assert f"Invite a friend: {JOIN}?ref=u1" in checkin_slip

    # Cake costs more than 35, tea is out of stock: only coffee is on offer.
    offer = k.offer("u1")
    assert offer.balance == 35
    assert offer.rewards == (RewardChoice("coffee", "咖啡", "Coffee", 30),)

    spent = k.redeem("u1", "coffee")
    assert spent.event.type == "points.redeemed"
    assert spent.event.data["balance"] == 5 and spent.event.data["voucher_id"] == "v1"
    assert k.offer("u1").balance == 5 and k.offer("u1").rewards == ()
    voucher_slip = door.slips(2)[1]
    assert "Reward voucher" in text_of(voucher_slip) and "Points left: 5" in text_of(voucher_slip)
    qr = printed_qr(voucher_slip)
    assert qr is not None
    coupon = verify_code(qr, ISSUER.public_keys, store="s1", now=time.time())
    assert isinstance(coupon, Code) and coupon.type is CodeType.COUPON
    assert (coupon.id, coupon.campaign) == ("v1", "reward:coffee")
    until = time.strftime("%Y-%m-%d", time.localtime(coupon.expires))
    assert f"Valid until: {until}" in text_of(voucher_slip)

    # The printed voucher is a coupon: taken at the door once, refused after.
    used = k.scan(qr)
    assert isinstance(used, Recorded) and used.event.type == "coupon.redeemed"
    again = k.scan(qr)
    assert isinstance(again, Recorded) and again.event.data["reason"] == "already_used"

    # Too few points now: refused with the numbers, nothing spent.
    short = k.redeem("u1", "coffee")
    assert short.event.type == "scan.rejected"
    assert short.event.data == {
        "reason": "insufficient_points",
        "member_id": "u1",
        "reward_id": "coffee",
        "points": 30,
        "balance": 5,
    }
    # A new base from the bridge, without `applied`: this door's visit (+10) and spend
    # (−30) stay on top of it.
    door.command("member.upsert", id="u1", points=100)
    assert k.offer("u1").balance == 80
    second = k.redeem("u1", "coffee")
    assert second.event.data["voucher_id"] == "v2"  # never v1 again
    assert k.offer("u1").rewards == ()  # no coffee voucher left to print
    gone = k.redeem("u1", "coffee")
    assert gone.event.data["reason"] == "not_allowed"
    assert k.offer("u1").balance == 50
    redeemed = [e for e in k.db.history() if e["type"] == "points.redeemed"]
    assert sorted(e["data"]["voucher_id"] for e in redeemed) == ["v1", "v2"]


def test_a_visit_elsewhere_holds_the_cooldown_here(door: Door) -> None:
    k = door.kiosk
    just_now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 300))
    door.command("member.upsert", id="u2", points=40, visits=4, last_visit=just_now)
    shown = k.scan(ISSUER.code("m", "u2"))
    assert isinstance(shown, Recorded)
    assert shown.event.data["counted"] is False and shown.event.data["points"] == 40


def test_a_visit_is_rated_once(door: Door) -> None:
    k = door.kiosk
    visit = k.scan(ISSUER.code("m", "u3"))
    assert isinstance(visit, Recorded)
    subject = rating_subject(visit.event.type, visit.event.id, visit.event.data)
    assert subject is not None
    with pytest.raises(ValueError):
        k.rate(subject, 6)
    rated = k.rate(subject, 4)
    assert rated.event.type == "review.submitted"
    assert rated.event.data == {
        "rating": 4,
        "subject": "checkin",
        "event": visit.event.id,
        "member_id": "u3",
    }
    twice = k.rate(subject, 5)
    assert twice.event.data["reason"] == "already_used"
    ratings = [e for e in k.db.history() if e["type"] == "review.submitted"]
    assert len(ratings) == 1 and k.db.outbox_size() == 3


def test_join_takes_a_pooled_member_code_and_prints_its_page(door: Door) -> None:
    k = door.kiosk
    cards = [
        {"id": f"mc{i}", "code": ISSUER.code("m", f"mc{i}"), "url": f"https://b.example/m/t{i}"}
        for i in (1, 2)
    ]
    door.command("pool.refill", kind="member", codes=cards[:1])
    first = k.join("13800138000", referrer="u1")
    assert first is not None
    assert first.event.data["member_id"] == "mc1"
    assert first.event.data["page_url"] == "https://b.example/m/t1"
    assert first.event.data["referrer"] == "u1"
    slip = door.slips(1)[0]
    assert printed_qr(slip) == "https://b.example/m/t1"
    assert f"Invite a friend: {JOIN}?ref=mc1" in text_of(slip)
    # The same phone again: the same member, and no code taken from the pool.
    door.command("pool.refill", kind="member", codes=cards)  # mc1 is never pooled again
    again = k.join("138 0013 8000")
    assert again is not None and again.event.data["member_id"] == "mc1"
    assert "page_url" not in again.event.data
    second = k.join("13900139000")
    assert second is not None and second.event.data["member_id"] == "mc2"
    # The pool is empty: a generated id and the shop's sign-up link, as before.
    third = k.join("13700137000")
    assert third is not None and "page_url" not in third.event.data
    member_id = third.event.data["member_id"]
    assert not re.fullmatch(r"mc\d", member_id)
    assert printed_qr(door.slips(4)[3]) == f"{JOIN}?j={member_id}"


def test_two_taps_at_once_never_share_a_voucher(door: Door) -> None:
    k = door.kiosk
    door.command("rewards.set", rewards=[{"id": "coffee", "name": "Coffee", "points": 30}])
    door.command("pool.refill", kind="voucher", reward="coffee", codes=vouchers("v1"))
    door.command("member.upsert", id="u1", points=100)
    door.command("member.upsert", id="u2", points=100)
    results: list[Recorded] = []
    start = threading.Barrier(2)

    def tap(member: str) -> None:
        start.wait()
        results.append(k.redeem(member, "coffee"))

    taps = [threading.Thread(target=tap, args=(m,)) for m in ("u1", "u2")]
    for t in taps:
        t.start()
    for t in taps:
        t.join(10)
    kinds = sorted(r.event.type for r in results)
    assert kinds == ["points.redeemed", "scan.rejected"]
    (won,) = [r for r in results if r.event.type == "points.redeemed"]
    loser = "u2" if won.event.data["member_id"] == "u1" else "u1"
    assert k.offer(won.event.data["member_id"]).balance == 70
    assert k.offer(loser).balance == 100  # the refused tap spent nothing


def test_news_of_many_members_in_one_command_is_applied_like_each_alone(door: Door) -> None:
    """A busy door's batch reaches the others as one `members.upsert`; each member in it
    counts as if it had come alone (its balance, its version), and a coupon used
    elsewhere, grouped likewise, is refused here."""
    k = door.kiosk
    door.command("member.upsert", id="u1", points=100, version=9)
    door.command(
        "members.upsert",
        members=[
            {"id": "u1", "points": 5, "version": 3},  # older than what the door has
            {"id": "u2", "name": "Bo", "points": 40, "visits": 4, "version": 7},
        ],
    )
    assert k.offer("u1").balance == 100 and k.offer("u2").balance == 40
    door.command("coupons.used", coupons=[{"id": "c1", "kiosk": "k9"}, {"id": "c2"}])
    for coupon in ("c1", "c2"):
        used = k.scan(ISSUER.code("c", coupon, cp="spring"))
        assert isinstance(used, Recorded) and used.event.data["reason"] == "already_used"
    fresh = k.scan(ISSUER.code("c", "c3", cp="spring"))
    assert isinstance(fresh, Recorded) and fresh.event.type == "coupon.redeemed"


BAD_VISITS = ["0001-01-01T00:00:00+14:00", "9999-12-31T12:00:00Z"]


@pytest.mark.parametrize("last_visit", BAD_VISITS)
def test_a_bad_last_visit_from_the_bridge_never_locks_a_member_out(
    door: Door, last_visit: str
) -> None:
    """Year 1 used to raise at every later check-in, year 9999 to hold the cooldown forever."""
    k = door.kiosk
    door.command("member.upsert", id="u1", points=20, visits=2, last_visit=last_visit)
    visit = k.scan(ISSUER.code("m", "u1", n="Ann"))
    assert isinstance(visit, Recorded) and visit.event.type == "checkin"
    assert visit.event.data["points_earned"] == 10 and visit.event.data["points"] == 30
    assert visit.event.data["visits"] == 3


@pytest.mark.parametrize("last_visit", BAD_VISITS)
def test_a_bad_last_visit_stored_before_the_fix_is_ignored(door: Door, last_visit: str) -> None:
    """A member document written by an earlier release, with the bad time stored."""
    k = door.kiosk
    at = datetime.fromisoformat(last_visit).timestamp()
    k.db.apply_changes([MemberUpdate("u1", {"points": 20, "last_visit_at": at})], time.time())
    visit = k.scan(ISSUER.code("m", "u1", n="Ann"))
    assert isinstance(visit, Recorded) and visit.event.type == "checkin"
    assert visit.event.data["points_earned"] == 10 and visit.event.data["points"] == 30
    # The cooldown still holds for the visit just counted.
    again = k.scan(ISSUER.code("m", "u1", n="Ann"))
    assert isinstance(again, Recorded) and again.event.data["points_earned"] == 0


def test_vouchers_about_to_expire_are_neither_offered_nor_printed(door: Door) -> None:
    k = door.kiosk
    rewards = [
        {"id": "coffee", "name": "Coffee", "points": 30},
        {"id": "cake", "name": "Cake", "points": 30},
    ]
    door.command("rewards.set", rewards=rewards)
    door.command("pool.refill", kind="voucher", reward="coffee", codes=vouchers("v1", days=3))
    door.command("pool.refill", kind="voucher", reward="cake", codes=vouchers("k1", days=3))
    door.command("member.upsert", id="u1", points=100)
    # Every voucher expires within a week: nothing is on offer, nothing can be spent.
    assert k.offer("u1").rewards == ()
    refused = k.redeem("u1", "coffee")
    assert refused.event.type == "scan.rejected" and k.offer("u1").balance == 100
    # Fresh coffee vouchers arrive (v3 signed a month before v2): the one that expires
    # first among those still good for a week goes first, the stale v1 never.
    door.command("pool.refill", kind="voucher", reward="coffee", codes=vouchers("v2", days=365))
    door.command("pool.refill", kind="voucher", reward="coffee", codes=vouchers("v3", days=335))
    assert [c.id for c in k.offer("u1").rewards] == ["coffee"]
    printed = [k.redeem("u1", "coffee").event.data.get("voucher_id") for _ in range(3)]
    assert printed == ["v3", "v2", None] and k.offer("u1").balance == 40
    assert k.offer("u1").rewards == ()
