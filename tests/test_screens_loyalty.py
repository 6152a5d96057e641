"""The result screen's rewards and ratings under a real X server (Xvfb), tapped like a
customer would.

Kivy's window is a process-wide singleton, so the app runs in a subprocess: this file is
also its driver (`python -m tests.test_screens_loyalty OUT`). The driver runs the real
app with `ShopBackend` behind it (a small ledger answering like the kiosk does: only a
recorded `points.redeemed` spends points), shows outcomes, taps rewards, "yes" and stars,
records what the screens say and where their widgets are, and takes screenshots; the tests
below check that record and those pictures. The screenshots are also copied to
/tmp/shots/ to look at.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from kiosk.i18n import LANGUAGES, Messages, load_catalog
from kiosk.loyalty import MemberOffer, RatingSubject, RewardChoice, rating_subject
from kiosk.screens.outcome import ERROR, Outcome, describe
from kiosk.screens.rewards import (
    confirm_text,
    offer_member,
    rated_text,
    redeemed_text,
    reward_label,
)
from o2o_protocol.messages import EventType, Reason
from tests import kivy_driver
from tests.kivy_driver import on_ui, run_driver, wait_for
from tests.test_ui import _decode

RESULT_S = 3.0
SHOTS = Path("/tmp/shots")
MEMBER, NAME = "mem-1", "王小明"
PAGE_URL = "https://shop.example/m/O2O1.eyJ0IjoibSJ9.c2ln"
LATTE = RewardChoice("latte", "拿铁咖啡", "Latte", 100)
COOKIE = RewardChoice("cookie", "手工曲奇", None, 30)
CAKE = RewardChoice("cake", "芝士蛋糕", "Cheesecake", 120)
TOTE = RewardChoice("tote", "帆布袋", "Tote bag", 60)
CATALOGUE = (LATTE, COOKIE, CAKE, TOTE)
#: Rewards the shop has paused: the kiosk refuses them with `not_allowed`.
PAUSED = {CAKE.id}
#: The smallest thumb target the screens may draw, in pixels at 1024x600.
MIN_TARGET = 60


def checkin(event_id: str, points: int) -> Outcome:
    data = {"member_id": MEMBER, "name": NAME, "points_earned": 10, "points": points}
    return Outcome(EventType.CHECKIN, None, {**data, "visits": 3, "counted": True}, event_id)


def pickup(event_id: str) -> Outcome:
    return Outcome(EventType.PICKUP_OPENED, None, {"order": "A-7", "locker": 2}, event_id)


ARRIVAL = Outcome(
    EventType.RESERVATION_ARRIVED,
    None,
    {"reservation_id": "rsv-9", "service": "剪发", "timing": "on_time"},
    "ev-arrival",
)
REFUSED = Outcome(EventType.SCAN_REJECTED, "already_used", {"reason": "already_used"}, "ev-no")


# --- the driver, in the app's process ---------------------------------------------------


class ShopBackend:
    """The kiosk's answers as the screens get them, from a ledger of one member.

    Answers come later on the UI thread, as the real session's do; with `hold` set,
    redemptions wait until `release()`, so the screen can be seen while the kiosk works.
    """

    def __init__(self) -> None:
        self.balance = 130
        self.calls: list[list[Any]] = []
        self.hold = False
        self._held: list[Callable[[], None]] = []
        self._rated: set[str] = set()

    @staticmethod
    def _later(done: Callable[[Any], None], value: Any) -> None:
        from kivy.clock import Clock

        Clock.schedule_once(lambda _dt: done(value))

    def offer(self, member_id: str, done: Callable[[MemberOffer | None], None]) -> None:
        self.calls.append(["offer", member_id])
        affordable = tuple(r for r in CATALOGUE if r.points <= self.balance)
        self._later(done, MemberOffer(member_id, self.balance, affordable))

    def redeem(self, member_id: str, reward_id: str, done: Callable[[Outcome], None]) -> None:
        self.calls.append(["redeem", member_id, reward_id])
        reward = next(r for r in CATALOGUE if r.id == reward_id)
        asked = {"member_id": member_id, "reward_id": reward_id, "points": reward.points}
        event_id = f"ev-{len(self.calls)}"
        if reward_id in PAUSED:
            outcome = Outcome(EventType.SCAN_REJECTED, "not_allowed", asked, event_id)
        elif reward.points > self.balance:
            data = {**asked, "balance": self.balance}
            outcome = Outcome(EventType.SCAN_REJECTED, "insufficient_points", data, event_id)
        else:
            self.balance -= reward.points
            data = {**asked, "reward": reward.name, "balance": self.balance, "voucher_id": "v1"}
            outcome = Outcome(EventType.POINTS_REDEEMED, None, data, event_id)
        if self.hold:
            self._held.append(lambda: self._later(done, outcome))
        else:
            self._later(done, outcome)

    def release(self) -> None:
        held, self._held = self._held, []
        for answer in held:
            answer()

    def rate(self, subject: RatingSubject, rating: int, done: Callable[[Any], None]) -> None:
        self.calls.append(["rate", asdict(subject), rating])
        if subject.event in self._rated:
            data = {"reason": "already_used"}
            outcome = Outcome(EventType.SCAN_REJECTED, "already_used", data, "ev-r")
        else:
            self._rated.add(subject.event)
            data = {"rating": rating, **asdict(subject)}
            outcome = Outcome(EventType.REVIEW_SUBMITTED, None, data, "ev-r")
        self._later(done, outcome)

    # The rest of the Backend: not used by these screens.
    def join(self, phone: str, done: Callable[[Any], None]) -> None:
        self._later(done, None)

    def staff_snapshot(self, done: Callable[[Any], None]) -> None:
        pass

    def staff_open(self, number: int, done: Callable[[Any], None]) -> None:
        self._later(done, Outcome(ERROR))

    def reprint(self, done: Callable[[Any], None]) -> None:
        self._later(done, None)

    def end_staff(self) -> None:
        pass


def _drive(out: Path) -> dict[str, Any]:
    """Run the app, play the scenario, and return what was seen."""
    from kiosk.config import UiSection
    from kiosk.ui import open_window

    if not open_window():
        raise SystemExit("driver: no display")
    from kivy.clock import Clock
    from kivy.core.text import Label as CoreLabel
    from kivy.uix.label import Label

    from kiosk.screens.app import KioskApp

    app = KioskApp(UiSection(language="zh_CN", result_s=RESULT_S))
    backend = ShopBackend()
    app.backend = backend
    report: dict[str, Any] = {}

    def result_screen() -> Any:
        return app.root.get_screen("result")

    def tap(find: Callable[[], Any]) -> float:
        return kivy_driver.tap(app, find)

    def fresh_countdown() -> None:
        if app.root.current == "result":
            result_screen().restart_timer()

    def shot(name: str) -> str:
        """A screenshot that costs the screen none of its time: on a busy machine taking
        one can outlast the countdown, and the next tap would find the start screen."""
        on_ui(fresh_countdown)
        path = kivy_driver.screenshot(app, out / f"{name}.png")
        on_ui(fresh_countdown)
        report.setdefault("shots", {})[name] = path
        return path

    def show(outcome: Outcome) -> float:
        on_ui(lambda: app.show_outcome(outcome))
        return wait_for("the result screen", lambda: app.root.current == "result")

    def boxes() -> list[dict[str, Any]]:
        """Every drawn text and touch target of the result screen, in window pixels."""
        found = []
        for widget in result_screen().walk(restrict=True):
            if widget.width <= 1 or widget.height <= 1 or widget.opacity == 0:
                continue
            parent = widget.parent
            x, y = widget.to_window(widget.x, widget.y)
            px, py = parent.to_window(parent.x, parent.y) if parent is not None else (x, y)
            found.append(
                {
                    "kind": type(widget).__name__,
                    "text": widget.text if isinstance(widget, Label) else "",
                    "rect": [x, y, widget.width, widget.height],
                    "parent": [px, py, parent.width, parent.height] if parent else None,
                    "texture": list(widget.texture_size) if isinstance(widget, Label) else None,
                    "touch": hasattr(widget, "trigger_action"),
                }
            )
        return found

    def state() -> dict[str, Any]:
        s = result_screen()
        return {
            "screen": app.root.current,
            "ok": s.ok,
            "title": s.title,
            "reward_state": s.reward_state,
            "rating_state": s.rating_state,
            "panel": list(s.panel_texts),
            "rewards": [b.text for b in s.reward_buttons],
            "confirm": {k: b.text for k, b in s.confirm_buttons.items()},
            "stars": len(s.star_buttons),
            "lit": [b.value for b in s.star_buttons if b.lit],
            "rating": list(s.rating_texts),
            "hint_shown": s.ids.touch_hint.opacity > 0,
            "remaining": s.remaining,
            "calls": [list(c) for c in backend.calls],
            "boxes": boxes(),
        }

    def reward_state(value: str) -> Callable[[], bool]:
        return lambda: app.root.current == "result" and result_screen().reward_state == value

    def rating_state(value: str) -> Callable[[], bool]:
        return lambda: app.root.current == "result" and result_screen().rating_state == value

    def at_start() -> bool:
        return bool(app.root.current == "start")

    def missing_glyphs(texts: list[str]) -> list[str]:
        """Characters the default font draws as its missing-glyph box."""

        def pixels(char: str) -> bytes:
            label = CoreLabel(text=char, font_size=40)
            label.refresh()
            return bytes(label.texture.pixels)

        tofu = pixels("\ue000")  # a private-use code point no font draws
        if pixels("\ue001") != tofu or pixels("拿") == tofu:
            return ["(the check itself does not tell glyphs from boxes)"]
        chars = sorted({c for t in texts for c in t if not c.isspace()})
        return [c for c in chars if pixels(c) == tofu]

    def redeem(index: int, lang: str, *, shots: bool) -> None:
        """Offer -> tap a reward -> confirm -> yes (held: the kiosk is working) -> answer."""
        tap(lambda: result_screen().reward_buttons[index])
        wait_for("the confirm step", reward_state("confirm"))
        report[f"confirm_{lang}"] = on_ui(state)
        if shots:
            shot(f"reward_confirm_{lang}")
        backend.hold = True
        tap(lambda: result_screen().confirm_buttons["yes"])
        wait_for("the kiosk at work", reward_state("busy"))
        report[f"busy_{lang}"] = on_ui(state)
        backend.hold = False
        on_ui(backend.release)
        wait_for("the recorded answer", reward_state("done"))
        report[f"done_{lang}"] = on_ui(state)
        if shots:
            shot(f"reward_done_{lang}")

    def scenario() -> None:
        try:
            wait_for("the start screen", at_start)
            for lang in ("zh", "en"):
                if lang == "en":
                    on_ui(lambda: app.set_language("en"))
                    backend.balance = 130
                    backend.calls.clear()
                # A check-in: the rewards the member can afford, then a tap, "no", a tap, "yes".
                show(checkin(f"ev-checkin-{lang}", 130))
                wait_for("the offer", reward_state("offer"))
                report[f"offer_{lang}"] = on_ui(state)
                shot(f"reward_offer_{lang}")
                tap(lambda: result_screen().reward_buttons[0])
                wait_for("the confirm step", reward_state("confirm"))
                tap(lambda: result_screen().confirm_buttons["no"])
                wait_for("the offer again", reward_state("offer"))
                report[f"after_no_{lang}"] = on_ui(state)
                redeem(0, lang, shots=True)
                # A star on the same screen: thanks in its place.
                tapped = tap(lambda: result_screen().star_buttons[3])
                wait_for("the thanks", rating_state("done"))
                report[f"rated_{lang}"] = on_ui(state)
                shot(f"rating_thanks_{lang}")
                back = wait_for("start, by itself", at_start, RESULT_S + 5)
                report[f"done_back_after_tap_s_{lang}"] = back - tapped

                # Too few points by the time of the yes (another door spent them meanwhile).
                show(checkin(f"ev-checkin2-{lang}", 30))
                wait_for("the offer", reward_state("offer"))
                report[f"offer_low_{lang}"] = on_ui(state)
                backend.balance = 10
                redeem(0, f"short_{lang}", shots=False)
                shot(f"reward_insufficient_{lang}")
                wait_for("start, by itself", at_start, RESULT_S + 5)

                # A pickup: a rating row, no rewards.
                backend.balance = 500
                show(pickup(f"ev-pickup-{lang}"))
                wait_for("the stars", rating_state("ask"))
                report[f"pickup_{lang}"] = on_ui(state)
                shot(f"rating_pickup_{lang}")
                tap(lambda: result_screen().star_buttons[4])
                wait_for("the thanks", rating_state("done"))
                report[f"pickup_rated_{lang}"] = on_ui(state)
                wait_for("start, by itself", at_start, RESULT_S + 5)

            # The shop paused a reward: the kiosk says no, the screen says so.
            show(checkin("ev-checkin-3", 500))
            wait_for("the offer", reward_state("offer"))
            report["offer_rich"] = on_ui(state)
            redeem(2, "paused", shots=False)
            shot("reward_not_available_en")

            # Nothing answered yet on the confirm step: a late touch gives the full time
            # again, and with no yes the screen still goes home, spending nothing.
            report["calls_before_idle_confirm"] = on_ui(lambda: list(backend.calls))
            shown = show(checkin("ev-checkin-4", 500))
            wait_for("the offer", reward_state("offer"))
            wait_for("half the countdown", lambda: result_screen().remaining < 0.5)
            tapped = tap(lambda: result_screen().reward_buttons[0])
            wait_for("the confirm step", reward_state("confirm"))
            report["confirm_idle"] = on_ui(state)
            tap(lambda: result_screen().ids.title)  # a thumb that missed "yes"
            report["after_stray_touch"] = on_ui(state)
            back = wait_for("start, by itself", at_start, RESULT_S * 2 + 5)
            report["confirm_back_after_show_s"] = back - shown
            report["confirm_back_after_tap_s"] = back - tapped
            report["calls_after_idle_confirm"] = on_ui(lambda: list(backend.calls))

            # An arrival: stars; left alone, the screen goes home by itself.
            shown = show(ARRIVAL)
            wait_for("the stars", rating_state("ask"))
            report["arrival"] = on_ui(state)
            report["arrival_back_s"] = wait_for("start, by itself", at_start, RESULT_S + 5) - shown

            # The same pickup rated again: the kiosk keeps one rating per event.
            show(pickup("ev-pickup-zh"))
            wait_for("the stars", rating_state("ask"))
            tap(lambda: result_screen().star_buttons[0])
            wait_for("the answer", rating_state("done"))
            report["pickup_again"] = on_ui(state)

            # A refusal: nothing to rate, nothing to spend.
            show(REFUSED)
            report["refused"] = on_ui(state)

            # A member scanned just as the last result fades out: the full panels still.
            def home_and_back() -> None:
                result_screen().go_home()
                app.show_outcome(checkin("ev-checkin-5", 500))

            on_ui(home_and_back)
            wait_for("the offer", reward_state("offer"))
            report["scanned_while_leaving"] = on_ui(state)
            on_ui(lambda: result_screen().go_home())

            # Joined with a pre-signed member code: the QR is the member's own page.
            joined = {"member_id": "m-7f3a", "known": False, "page_url": PAGE_URL}

            def join_answered() -> None:
                app.show_join()
                app._joined(Outcome(EventType.MEMBER_JOINED, None, joined, "ev-j"))

            on_ui(join_answered)
            wait_for("the joined screen", lambda: app.root.current == "joined")
            report["joined_hint"] = on_ui(lambda: app.root.get_screen("joined").ids.hint.text)
            report["joined_language"] = on_ui(lambda: app.language)
            shot("joined_page")
            on_ui(lambda: app.root.get_screen("joined").go_home())

            zh_texts = [v for k, v in load_catalog("zh_CN").items() if k.startswith(_NEW_KEYS)]
            names = [r.name for r in CATALOGUE]
            report["missing_glyphs"] = on_ui(lambda: missing_glyphs([*zh_texts, *names]))
        except BaseException:
            report["error"] = traceback.format_exc()
        finally:
            Clock.schedule_once(lambda _dt: app.stop())

    app.bind(on_start=lambda *_: threading.Thread(target=scenario, daemon=True).start())
    app.run()
    return report


#: The catalog keys of this part of the screens.
_NEW_KEYS = ("reward.", "rating.", "reason.insufficient_points", "reason.outside_hours")


def _driver_main(argv: list[str]) -> int:
    out = Path(argv[0])
    report = _drive(out)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return 1 if "error" in report else 0


# --- the tests, in pytest's process -------------------------------------------------------


@pytest.fixture(scope="module")
def run(xvfb_display: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the scenario under Xvfb; the report (screenshots copied to /tmp/shots)."""
    out = tmp_path_factory.mktemp("loyalty")
    report = run_driver("tests.test_screens_loyalty", out, xvfb_display, "1024x600")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in report["shots"].items():
        shutil.copyfile(path, SHOTS / f"{name}.png")
    return report


ZH, EN = Messages("zh_CN"), Messages("en")


def test_checkin_offers_the_affordable_rewards_and_the_balance(run: dict[str, Any]) -> None:
    offer = run["offer_zh"]
    assert offer["ok"] is True and NAME in offer["title"]
    assert offer["calls"] == [["offer", MEMBER]]
    # 130 points: all four are affordable, the first three fit.
    assert offer["rewards"] == ["拿铁咖啡 · 100 分", "手工曲奇 · 30 分", "芝士蛋糕 · 120 分"]
    assert offer["panel"] == [ZH.get("reward.title"), "当前积分 130"]
    assert offer["stars"] == 5
    # With fewer points, only what the member can afford.
    assert run["offer_low_zh"]["rewards"] == ["手工曲奇 · 30 分"]
    en = run["offer_en"]
    assert en["rewards"] == ["Latte · 100 pts", "手工曲奇 · 30 pts", "Cheesecake · 120 pts"]
    assert en["panel"] == ["Spend your points", "Balance: 130 pts"]


def test_spending_needs_a_yes_and_shows_only_what_was_recorded(run: dict[str, Any]) -> None:
    confirm = run["confirm_zh"]
    assert confirm["panel"] == ["确定兑换「拿铁咖啡」吗？\n将使用 100 积分"]
    assert confirm["confirm"] == {"yes": "确定兑换", "no": "再想想"}
    assert not [c for c in confirm["calls"] if c[0] == "redeem"]  # a tap alone spends nothing
    assert run["after_no_zh"]["reward_state"] == "offer"  # "no" goes back to the choice
    assert not [c for c in run["after_no_zh"]["calls"] if c[0] == "redeem"]
    # While the kiosk works, the screen says so, and nothing about success.
    busy = run["busy_zh"]
    assert busy["panel"] == [ZH.get("reward.busy")]
    assert busy["calls"][-1] == ["redeem", MEMBER, LATTE.id]
    done = run["done_zh"]
    assert done["panel"] == ["兑换成功，请享用！", "兑换券正在打印，请取走", "剩余积分 30"]
    assert [c for c in done["calls"] if c[0] == "redeem"] == [["redeem", MEMBER, LATTE.id]]
    assert run["confirm_en"]["panel"] == ["Spend 100 points on Latte?"]
    assert run["done_en"]["panel"] == ["Enjoy!", "Your voucher is printing", "Points left: 30"]


def test_too_few_points_and_a_paused_reward_say_so(run: dict[str, Any]) -> None:
    short = run["done_short_zh"]
    assert short["panel"] == ["积分不足", "您当前有 10 积分"]
    assert short["calls"][-1] == ["redeem", MEMBER, COOKIE.id]
    assert run["done_short_en"]["panel"] == ["Not enough points", "You have 10 points"]
    assert run["done_short_zh"]["ok"] is True  # the check-in itself still counted
    assert run["done_paused"]["panel"] == ["Not available right now", "Please ask the staff"]


def test_a_rating_is_one_tap_recorded_once_with_thanks(run: dict[str, Any]) -> None:
    rated = run["rated_zh"]
    assert rated["rating"] == ["谢谢您的评价！"] and rated["stars"] == 0
    rates = [c for c in rated["calls"] if c[0] == "rate"]
    subject = {"member_id": MEMBER, "order": None, "reservation_id": None}
    assert rates == [["rate", {"subject": "checkin", "event": "ev-checkin-zh", **subject}, 4]]
    pickup = run["pickup_zh"]
    assert pickup["reward_state"] == "" and pickup["stars"] == 5
    assert pickup["rating"] == ["为本次服务评价"]
    offers = [c for c in pickup["calls"] if c[0] == "offer"]
    assert offers == [c for c in run["done_short_zh"]["calls"] if c[0] == "offer"]
    done = run["pickup_rated_zh"]
    assert done["rating"] == ["谢谢您的评价！"]
    subject = {"member_id": None, "order": "A-7", "reservation_id": None}
    rated_pickup = {"subject": "pickup", "event": "ev-pickup-zh", **subject}
    assert done["calls"][-1] == ["rate", rated_pickup, 5]
    assert run["pickup_rated_en"]["rating"] == ["Thank you for your rating!"]
    # The same pickup again: the kiosk keeps the first rating, and the screen says so.
    assert run["pickup_again"]["rating"] == [EN.get("rating.already")]
    arrival = run["arrival"]
    assert arrival["stars"] == 5 and arrival["reward_state"] == ""
    leaving = run["scanned_while_leaving"]
    assert leaving["screen"] == "result" and leaving["stars"] == 5 and leaving["rewards"]
    refused = run["refused"]
    assert refused["stars"] == 0 and refused["reward_state"] == "" and refused["ok"] is False


def test_every_state_goes_back_to_start_by_itself(run: dict[str, Any]) -> None:
    # Each wait in the driver ended on the start screen; these are the timings.
    for lang in ("zh", "en"):
        assert RESULT_S * 0.8 <= run[f"done_back_after_tap_s_{lang}"] <= RESULT_S + 3
    assert RESULT_S * 0.8 <= run["arrival_back_s"] <= RESULT_S + 3
    # A tap late in the countdown gave the full time again ...
    assert run["confirm_back_after_tap_s"] >= RESULT_S * 0.8
    assert run["confirm_back_after_show_s"] >= RESULT_S * 1.3
    # ... a thumb that missed "yes" neither left nor spent, and no yes spent nothing.
    assert run["after_stray_touch"]["screen"] == "result"
    assert run["after_stray_touch"]["reward_state"] == "confirm"
    assert run["confirm_idle"]["hint_shown"] is False  # no "touch to go back" while deciding
    assert run["offer_zh"]["hint_shown"] is True
    before, after = run["calls_before_idle_confirm"], run["calls_after_idle_confirm"]
    assert after == [*before, ["offer", MEMBER]]


def _inside(inner: list[float], outer: list[float], slack: float = 1.5) -> bool:
    x, y, w, h = inner
    ox, oy, ow, oh = outer
    return (
        x >= ox - slack
        and y >= oy - slack
        and x + w <= ox + ow + slack
        and (y + h <= oy + oh + slack)
    )


def test_a_member_who_joins_with_a_pooled_code_gets_their_own_page(run: dict[str, Any]) -> None:
    assert run["joined_hint"] == Messages(run["joined_language"]).get("joined.hint_page")
    assert _decode(run["shots"]["joined_page"]) == [PAGE_URL]


def test_layout_fits_with_thumb_sized_targets(run: dict[str, Any]) -> None:
    states = [k for k in run if isinstance(run[k], dict) and "boxes" in run[k]]
    assert len(states) >= 15
    for key in states:
        for box in run[key]["boxes"]:
            where = (key, box["kind"], box["text"])
            assert _inside(box["rect"], [0, 0, 1024, 600]), where
            if box["parent"] is not None:
                assert _inside(box["rect"], box["parent"]), where  # nothing spills out
            if box["texture"] is not None and box["text"]:
                # Text fits its widget (a reward's long name is shortened, never cut).
                assert box["texture"][0] <= box["rect"][2] + 1, where
                assert box["texture"][1] <= box["rect"][3] + 1, where
            if box["touch"]:
                assert min(box["rect"][2], box["rect"][3]) >= MIN_TARGET, where


def test_screenshots_show_both_languages_without_missing_glyphs(run: dict[str, Any]) -> None:
    import cv2

    assert run["missing_glyphs"] == []
    shots = run["shots"]
    for name in (
        "reward_offer",
        "reward_confirm",
        "reward_done",
        "rating_thanks",
        "reward_insufficient",
        "rating_pickup",
    ):
        zh, en = cv2.imread(shots[f"{name}_zh"]), cv2.imread(shots[f"{name}_en"])
        for image in (zh, en):
            assert image.shape[:2] == (600, 1024), name
            # A whole screen, not a fade: the result's green at the edges.
            for x, y in ((4, 300), (1019, 590)):
                assert tuple(int(v) for v in image[y, x]) == pytest.approx((56, 120, 23), abs=2)
        assert float(cv2.absdiff(zh, en).mean()) > 1, f"{name}: both languages look alike"


# --- the words, without a window -----------------------------------------------------------


def test_every_new_message_exists_in_both_languages() -> None:
    zh, en = load_catalog("zh_CN"), load_catalog("en")
    assert set(zh) == set(en)
    new = [k for k in zh if k.startswith(_NEW_KEYS)]
    assert len(new) >= 20
    for key in new:
        assert zh[key] != en[key], key
        assert any("\u4e00" <= c <= "\u9fff" for c in zh[key]), key  # Chinese, not a copy


def test_only_a_recorded_redemption_reads_as_success() -> None:
    for language in LANGUAGES:
        m = Messages(language)
        done = Outcome(EventType.POINTS_REDEEMED, None, {"balance": 7}, "e1")
        assert redeemed_text(done, m).ok and "7" in redeemed_text(done, m).extra
        for answer in (
            Outcome(ERROR),
            Outcome(EventType.SCAN_REJECTED, "insufficient_points", {"balance": 3}, "e2"),
            Outcome(EventType.SCAN_REJECTED, "not_allowed", {}, "e3"),
            Outcome(EventType.SCAN_REJECTED, "already_used", {}, "e4"),
            Outcome(EventType.CHECKIN, None, {}, "e5"),  # not an answer to a redemption
        ):
            text = redeemed_text(answer, m)
            assert not text.ok and text.title != redeemed_text(done, m).title, answer
        short = Outcome(EventType.SCAN_REJECTED, "insufficient_points", {"balance": 3})
        assert redeemed_text(short, m).detail == m.get("reward.balance_have", balance=3)
        assert rated_text(Outcome(EventType.REVIEW_SUBMITTED, None, {}, "r"), m).ok
        assert not rated_text(None, m).ok and not rated_text(Outcome(ERROR), m).ok
        # The new reasons read in customer words wherever a refusal is shown.
        for reason in (Reason.INSUFFICIENT_POINTS, Reason.OUTSIDE_HOURS):
            text = describe(Outcome(EventType.SCAN_REJECTED, reason.value), m)
            assert text.title == m.get(f"reason.{reason.value}.title") and text.detail


def test_reward_words_use_the_english_name_when_there_is_one() -> None:
    assert reward_label(LATTE, ZH) == "拿铁咖啡 · 100 分"
    assert reward_label(LATTE, EN) == "Latte · 100 pts"
    assert reward_label(COOKIE, EN) == "手工曲奇 · 30 pts"
    assert confirm_text(TOTE, EN) == "Spend 60 points on Tote bag?"


def test_what_is_offered_and_rated_after_which_outcome() -> None:
    assert offer_member(checkin("e", 10)) == MEMBER
    assert offer_member(pickup("e")) is None and offer_member(REFUSED) is None
    assert offer_member(Outcome(EventType.CHECKIN, None, {}, "e")) is None  # anonymous
    assert rating_subject("checkin", "e", {"member_id": "m"}) == RatingSubject(
        "checkin", "e", member_id="m"
    )
    assert rating_subject("pickup.completed", "e", {"order": "A-7"}) == RatingSubject(
        "pickup", "e", order="A-7"
    )
    assert rating_subject("reservation.arrived", "e", {"reservation_id": "r"}) == RatingSubject(
        "reservation", "e", reservation_id="r"
    )
    for other in ("coupon.redeemed", "scan.rejected", "member.joined", "points.redeemed"):
        assert rating_subject(other, "e", {}) is None


if __name__ == "__main__":
    sys.exit(_driver_main(sys.argv[1:]))
