"""Every screen at every display the kiosk supports: nothing cut, nothing off screen.

Kivy has one window per process, so each display size is one subprocess (this file is
also its driver: `python -m tests.test_ui_layout OUT WxH`) under its own Xvfb of exactly
that size and no window manager. The driver shows every screen (start, online and
offline; each outcome, every refusal for each code type; long names in Chinese and
Latin; join, a refused phone number, joined; staff; the reward and rating panels) in
both languages and records, for each, the visible labels whose text does not fit their
widget and the widgets that leave the window. At 800x480 it also saves a screenshot of
every screen (copied to /tmp/shots/layout/ to look at).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiosk.loyalty import MemberOffer, RewardChoice
from kiosk.screens.backend import LockerView, PreorderView, StaffSnapshot
from kiosk.screens.outcome import ERROR, LOADING, Outcome
from kiosk.screens.palette import AMBER, INK, MUTED_ON_INK, NAVY, NO_RED, OK_GREEN
from o2o_protocol.messages import EventType, Reason
from tests.kivy_driver import on_ui, wait_for
from tests.test_ui import REPO, _kivy_env, _need_kivy
from tests.test_ui_window import _xvfb

#: The official Pi 7" display, a common 7" panel, and both turned to portrait.
SIZES = ("800x480", "1024x600", "600x1024", "480x800")
#: Where every screenshot is shown, for people to look at.
SHOT_SIZE = "800x480"
#: Where the screens' going back to the start by themselves is timed (once is enough).
TIMED_SIZE = "1024x600"
SHOTS = Path("/tmp/shots/layout")
JOIN_URL = "https://shop.example.com/join?store=s1"
LONG_ZH = "欧阳娜娜丽莎白金汉宫殿下长公主殿下的名字实在是太长了真的非常非常长的一个名字测试"
LONG_EN = "Maximiliana Alexandra Montgomery-Worthington the Third of Kensington"
REWARDS = (
    RewardChoice("latte", "超大杯香草燕麦拿铁咖啡加浓缩", "Extra large vanilla oat latte", 100),
    RewardChoice("cookie", "手工曲奇", "Cookie", 30),
    RewardChoice("tote", "帆布袋", "Tote bag", 60),
)
#: Code types a refusal can name, and the reasons a refusal can have for each.
KINDS = ("m", "c", "r", "p", "s")


def checkin(name: str, visits: int, event_id: str = "") -> Outcome:
    data = {"member_id": "mem-1", "name": name, "points_earned": 10, "points": 10 * visits}
    return Outcome(EventType.CHECKIN, None, {**data, "visits": visits, "counted": True}, event_id)


def refusal(reason: str, kind: str = "", **data: Any) -> Outcome:
    fields: dict[str, Any] = {"reason": reason, **data}
    if kind:
        fields["code_type"] = kind
    return Outcome(EventType.SCAN_REJECTED, reason, fields)


def outcomes() -> list[tuple[str, Outcome]]:
    """Every outcome the result screen can show, named."""
    shown = [
        ("checkin_first_long_zh", checkin(LONG_ZH, 1)),
        ("checkin_long_en", checkin(LONG_EN, 7)),
        (
            "coupon",
            Outcome(EventType.COUPON_REDEEMED, None, {"campaign": "开业酬宾", "value": "满50减10"}),
        ),
        (
            "visit_card",
            Outcome(
                EventType.COUPON_REDEEMED,
                None,
                {"campaign_name": "十次洗车卡", "value": "洗车一次", "use": 3, "uses": 10},
            ),
        ),
        (
            "reservation_long",
            Outcome(
                EventType.RESERVATION_ARRIVED,
                None,
                {"name": LONG_EN, "service": "剪发 · 洗吹造型", "timing": "late"},
            ),
        ),
        ("pickup", Outcome(EventType.PICKUP_OPENED, None, {"locker": 12, "order": "A-7"})),
        (
            "pickup_unconfirmed",
            Outcome(EventType.PICKUP_OPENED, None, {"locker": 3, "confirmed": False}),
        ),
        ("pickup_failed", Outcome(EventType.PICKUP_FAILED, None, {"locker": 2})),
        ("locker_fault", Outcome(EventType.LOCKER_FAULT, None, {"locker": 2})),
        ("loading", Outcome(LOADING, None, {"locker": 4, "order": "A-7"})),
        ("error", Outcome(ERROR)),
        ("joined_event", Outcome(EventType.MEMBER_JOINED, None, {})),
        ("card_used_up", refusal("already_used", "c", uses=10)),
        ("wrong_store", refusal("wrong_store", "c", claimed_store="store-shanghai-jingan-02")),
        ("not_yet_valid", refusal("not_yet_valid", "c", valid_from="2026-12-24T18:30")),
        (
            "outside_hours",
            refusal(
                "outside_hours", "c", hours=[{"days": [2, 3, 4, 5], "from": "14:00", "to": "17:00"}]
            ),
        ),
    ]
    for reason in Reason:
        for kind in KINDS if reason in (Reason.EXPIRED, Reason.ALREADY_USED) else ("",):
            shown.append(
                (f"refused_{reason.value}{'_' + kind if kind else ''}", refusal(reason, kind))
            )
    return shown


class LayoutBackend:
    """Answers as the kiosk would, at once; the start screen learns `online` from it."""

    def __init__(self) -> None:
        self.online = True

    @staticmethod
    def _later(done: Callable[[Any], None], value: Any) -> None:
        from kivy.clock import Clock

        Clock.schedule_once(lambda _dt: done(value))

    def offer(self, member_id: str, done: Callable[[Any], None]) -> None:
        self._later(done, MemberOffer(member_id, 130, REWARDS))

    def redeem(self, member_id: str, reward_id: str, done: Callable[[Any], None]) -> None:
        data = {"member_id": member_id, "reward_id": reward_id, "balance": 30}
        self._later(done, Outcome(EventType.POINTS_REDEEMED, None, data, "ev-p"))

    def rate(self, subject: Any, rating: int, done: Callable[[Any], None]) -> None:
        self._later(done, Outcome(EventType.REVIEW_SUBMITTED, None, {"rating": rating}, "ev-r"))

    def join(self, phone: str, done: Callable[[Any], None]) -> None:
        if len(phone) < 11:
            self._later(done, None)
            return
        data = {"member_id": "mem-9", "join_url": "https://shop.example/join?j=mem-9"}
        self._later(done, Outcome(EventType.MEMBER_JOINED, None, {**data, "known": False}))

    def staff_snapshot(self, done: Callable[[StaffSnapshot], None]) -> None:
        lockers = [
            LockerView(1, "holds", "A-7"),
            LockerView(2, "free"),
            LockerView(3, "open", "B-1234567"),
            LockerView(4, "fault"),
            LockerView(5, "free"),
            LockerView(6, "holds", "C-99"),
        ]
        orders = [PreorderView(f"D-{i}", LONG_ZH if i == 1 else "李雷") for i in range(1, 9)]
        snap = StaffSnapshot(True, orders, lockers, "paper_out", "ok", 123, self.online)
        self._later(done, snap)

    def staff_open(self, number: int, done: Callable[[Any], None]) -> None:
        self._later(done, Outcome(ERROR))

    def reprint(self, done: Callable[[Any], None]) -> None:
        self._later(done, None)

    def end_staff(self) -> None:
        pass


# --- the driver, in the app's process ---------------------------------------------------


def _problems(screen: Any, window: tuple[int, int]) -> list[str]:
    """Visible labels whose text needs more room than they have, and widgets outside
    the window, on one screen as drawn now."""
    from kivy.core.text import Label as CoreLabel
    from kivy.uix.label import Label

    found: list[str] = []
    width, height = window

    def visible(widget: Any) -> bool:
        while widget is not None and widget is not screen:
            if widget.opacity == 0:
                return False
            widget = widget.parent
        return True

    for widget in screen.walk(restrict=True):
        if widget is screen or widget.width <= 1 or widget.height <= 1 or not visible(widget):
            continue
        x, y = widget.to_window(widget.x, widget.y)
        name = f"{type(widget).__name__}({getattr(widget, 'text', '')[:30]!r})"
        if x < -1 or y < -1 or x + widget.width > width + 1 or y + widget.height > height + 1:
            box = [round(v) for v in (x, y, widget.width, widget.height)]
            found.append(f"off screen: {name} at {box}")
        if not isinstance(widget, Label) or not widget.text.strip():
            continue
        # What the text needs at this width with no limit on lines and no shortening.
        options = dict(widget._label.options)
        wrap = widget.text_size[0]
        options.update(max_lines=0, shorten=False, text_size=(wrap or None, None))
        options.pop("text", None)
        natural = CoreLabel(text=widget.text, **options)
        natural.refresh()
        need_w, need_h = natural.texture.size if natural.texture else (0, 0)
        if need_w > widget.width + 2 or need_h > widget.height + 2:
            if widget.shorten:  # ellipsized on purpose: the test names where
                found.append(f"shortened: {type(widget).__name__}")
                continue
            has = f"{round(widget.width)}x{round(widget.height)}"
            found.append(f"cut: {name} needs {need_w}x{need_h}, has {has}")
        tex_w, tex_h = widget.texture_size
        if tex_w > widget.width + 2 or tex_h > widget.height + 2:
            found.append(f"overflows: {name} texture {tex_w}x{tex_h}")
    return found


def _drive(out: Path, size: str) -> dict[str, Any]:
    from kiosk.config import UiSection
    from kiosk.ui import open_window

    if not open_window():
        raise SystemExit("driver: no display")
    from kivy.clock import Clock
    from kivy.core.window import Window

    from kiosk.screens.app import KioskApp

    ui = UiSection(language="zh_CN", result_s=120, refusal_s=120, join_url=JOIN_URL)
    app = KioskApp(ui)
    backend = LayoutBackend()
    app.backend = backend
    report: dict[str, Any] = {"problems": {}, "shots": {}, "seen": []}
    shoot = size == SHOT_SIZE

    def frames(n: int = 3) -> None:
        """Let Kivy lay out and render what just changed (a few frames)."""
        done = threading.Event()
        count = [0]

        def tick(_dt: float) -> bool:
            count[0] += 1
            if count[0] >= n:
                done.set()
                return False
            return True

        Clock.schedule_interval(tick, 0)
        done.wait(5)

    def look(name: str) -> None:
        begun = time.monotonic()

        def still() -> bool:
            """The transition is over (mid-fade frames are half drawn); then a running
            countdown, which redraws every frame and under Xvfb's software GL would be
            most of the run's time, is stopped (its bar stays full; timed in `_timing`)."""
            if app.root.transition.is_active:
                return False
            getattr(app.root.current_screen, "cancel_timer", lambda: None)()
            return True

        wait_for("the end of a transition", still)
        frames()
        window, problems = on_ui(
            lambda: (list(Window.size), _problems(app.root.current_screen, tuple(Window.size)))
        )
        report["window"] = window
        key = f"{name}_{app.language}"
        report["seen"].append(key)
        report.setdefault("look_s", []).append(round(time.monotonic() - begun, 2))
        if problems:
            report["problems"][key] = problems
        if shoot:
            # Drawn afresh into the back buffer first (see kivy_driver.screenshot); the
            # frames above already let the labels settle.
            path = str(out / f"{key}.png")
            report["shots"][key] = on_ui(
                lambda: (Window.dispatch("on_draw"), Window.screenshot(name=path))[1]
            )

    def show(outcome: Outcome) -> None:
        on_ui(lambda: app.show_outcome(outcome))
        wait_for("the result screen", lambda: app.root.current == "result")

    def result_state(which: str, value: str) -> Callable[[], bool]:
        return lambda: getattr(app.root.get_screen("result"), which) == value

    def play(language: str) -> None:
        """Every screen in one language."""
        start = app.root.get_screen("start")
        result = app.root.get_screen("result")
        # Built on first use, on the UI thread (kiosk.screens.app.Screens).
        join, joined = on_ui(lambda: (app.root.get_screen("join"), app.root.get_screen("joined")))
        on_ui(lambda language=language: app.set_language(language))
        on_ui(lambda: app.root.current_screen.go_home() if app.root.current != "start" else None)
        wait_for("the start screen", lambda: app.root.current == "start")
        backend.online = True
        on_ui(start.check_online)
        wait_for("online", lambda: not start.offline)
        look("start")
        backend.online = False
        on_ui(start.check_online)
        wait_for("the offline banner", lambda: start.offline)
        report.setdefault("offline_text", {})[language] = on_ui(
            lambda: start.ids.offline_banner.text
        )
        look("start_offline")
        backend.online = True
        on_ui(start.check_online)
        wait_for("the banner to go", lambda: not start.offline)
        report.setdefault("online_text", {})[language] = on_ui(
            lambda: start.ids.offline_banner.text
        )

        for name, outcome in outcomes():
            show(outcome)
            look(name)
            if name == "pickup":
                report.setdefault("pickup_fonts", {})[language] = on_ui(lambda: _fonts(result))

        # The reward panel, its confirm step and the answer, and the rating row.
        show(checkin(LONG_ZH, 9, "ev-c"))
        wait_for("the offer", result_state("reward_state", "offer"))
        look("rewards")
        on_ui(lambda: result.pick(result.reward_buttons[0]))
        wait_for("the confirm step", result_state("reward_state", "confirm"))
        look("rewards_confirm")
        on_ui(lambda: result.confirm(True))
        wait_for("the voucher", result_state("reward_state", "done"))
        on_ui(lambda: result.rate(result.star_buttons[4]))
        wait_for("the thanks", result_state("rating_state", "done"))
        look("rewards_done")

        on_ui(app.show_join)
        wait_for("the join screen", lambda: app.root.current == "join")
        look("join")
        for digit in "12345":
            on_ui(lambda digit=digit: join.press(digit))
        on_ui(join.submit)
        wait_for("the refusal", lambda: join.message == "join.bad_phone")
        report.setdefault("join_bad", {})[language] = on_ui(
            lambda: {
                "phone": join.ids.phone.text,
                "message": join.ids.message.text,
                "message_font": join.ids.message.font_size,
                "label_font": 26 * app.scale,
                "gap": join.ids.message.y - join.ids.phone.top,
            }
        )
        look("join_bad_phone")
        on_ui(lambda: setattr(join, "digits", ""))
        for digit in "13800138000":
            on_ui(lambda digit=digit: join.press(digit))
        on_ui(join.submit)
        wait_for("the joined screen", lambda: app.root.current == "joined")
        look("joined")
        on_ui(lambda: joined.show({"known": True, "join_url": ""}))
        look("joined_known_no_qr")

        staff = Outcome(EventType.STAFF_LOGIN, None, {"name": LONG_EN, "staff_id": "s1"})
        on_ui(lambda staff=staff: app.show_outcome(staff))
        wait_for("the staff screen", lambda: app.root.current == "staff")
        wait_for(
            "the lockers",
            lambda: len(app.root.get_screen("staff").ids.lockers.children) == 6,
        )
        look("staff")
        on_ui(lambda: app.root.get_screen("staff").go_home())

    def scenario() -> None:
        try:
            start = app.root.get_screen("start")
            on_ui(lambda: setattr(start, "offline_grace_s", 0))
            for language in ("zh_CN", "en"):
                play(language)
            report["colours"] = on_ui(lambda: _colours(app))
            if size == TIMED_SIZE:
                report["timing"] = _timing(app)
        except BaseException:
            report["error"] = traceback.format_exc()
        finally:
            Clock.schedule_once(lambda _dt: app.stop())

    app.bind(on_start=lambda *_: threading.Thread(target=scenario, daemon=True).start())
    app.run()
    return report


def _fonts(screen: Any) -> dict[str, Any]:
    """The font size of the locker number and of every other visible text on a screen."""
    from kivy.uix.label import Label

    others = [
        w.font_size
        for w in screen.walk(restrict=True)
        if isinstance(w, Label) and w.text.strip() and w.opacity > 0 and w.text != screen.big
    ]
    return {"big": screen.ids.big.font_size, "big_text": screen.ids.big.text, "others": others}


def _colours(app: Any) -> dict[str, Any]:
    """The colours the contrast goals are about, as the widgets have them now: each
    [foreground, background] (a translucent foreground is blended by the test)."""
    from kiosk.screens.palette import result_colours

    result = app.root.get_screen("result")
    join = app.root.get_screen("join")
    joined = app.root.get_screen("joined")
    pairs: dict[str, Any] = {}
    for tone, (ok, wait) in {
        "ok": (True, False),
        "no": (False, False),
        "wait": (False, True),
    }.items():
        from kiosk.screens.outcome import ResultText

        result.show(ResultText(ok, "t", wait=wait))
        fill = list(result_colours(ok, wait)[0])
        pairs[f"touch_hint_{tone}"] = [list(result.ids.touch_hint.color), fill]
        bar = next(w for w in result.walk() if type(w).__name__ == "CountdownBar")
        pairs[f"countdown_{tone}"] = [list(bar.ink), fill]
        pairs[f"title_{tone}"] = [list(result.ids.title.color), fill]
    join.digits = ""
    pairs["phone_placeholder"] = [list(join.ids.phone.color), list(INK)]
    done = joined.ids.done_button
    pairs["done_button"] = [list(done.ink), list(done.fill)]
    return pairs


def _timing(app: Any) -> dict[str, float]:
    """Seconds before a success and a refusal go back to the start screen by themselves
    (with short settings), and the join, joined and staff screens."""
    result = app.root.get_screen("result")
    on_ui(lambda: (setattr(result, "ok_s", 1.0), setattr(result, "refusal_s", 2.5)))
    arrivals: list[float] = []
    on_ui(
        lambda: app.root.bind(
            current=lambda _sm, now: arrivals.append(time.monotonic()) if now == "start" else None
        )
    )

    def back_after(show: Callable[[], None]) -> float:
        """`show` something on the UI thread; seconds until the start screen is back."""
        shown = on_ui(lambda: (show(), time.monotonic())[1])
        wait_for("the start screen again", lambda: bool(arrivals) and arrivals[-1] > shown, 15)
        return arrivals[-1] - float(shown)

    times = {}
    for name, outcome in (("success", checkin("李", 3)), ("refusal", refusal("expired", "c"))):
        times[name] = back_after(lambda outcome=outcome: app.show_outcome(outcome))
    for name in ("join", "joined", "staff"):
        screen = on_ui(lambda name=name: app.root.get_screen(name))
        on_ui(lambda screen=screen: setattr(screen, "timeout_s", 1.0))
        times[name] = back_after(lambda name=name: setattr(app.root, "current", name))
    return times


def _driver_main(argv: list[str]) -> int:
    out, size = Path(argv[0]), argv[1]
    report = _drive(out, size)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return 1 if "error" in report else 0


# --- the tests, in pytest's process -------------------------------------------------------


def _run_driver(size: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One driver run at one display size: its report."""
    _need_kivy()
    out = tmp_path_factory.mktemp(f"layout-{size}")
    env = _kivy_env(out / "kivy-home")
    width, height = (int(v) for v in size.split("x"))
    with _xvfb(width, height) as display:
        env.update(DISPLAY=display, SDL_VIDEODRIVER="x11", O2O_UI_WINDOW=size)
        proc = subprocess.run(
            [sys.executable, "-m", "tests.test_ui_layout", str(out), size],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    path = out / "report.json"
    if not path.exists():
        pytest.fail(f"the layout driver crashed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    assert "error" not in report, f"{report['error']}\n{proc.stderr[-3000:]}"
    if report["shots"]:
        shutil.rmtree(SHOTS, ignore_errors=True)
        SHOTS.mkdir(parents=True)
        for shot in report["shots"].values():
            shutil.copy(shot, SHOTS / Path(shot).name)
    report["size"] = size
    return report


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """The report at a size, the driver run once per size for the whole module: the
    screenshot and timing tests read the same runs as the per-size tests."""
    done: dict[str, dict[str, Any]] = {}

    def at(size: str) -> dict[str, Any]:
        if size not in done:
            done[size] = _run_driver(size, tmp_path_factory)
        return done[size]

    return at


@pytest.fixture(scope="module", params=SIZES)
def layout(
    request: pytest.FixtureRequest, reports: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """The report at each display size."""
    return reports(request.param)


def test_every_screen_fits_without_cuts(layout: dict[str, Any]) -> None:
    width, height = (int(v) for v in layout["size"].split("x"))
    assert layout["window"] == [width, height]
    expected = 2 * (len(outcomes()) + 10)  # outcomes and ten other screens, two languages
    assert len(layout["seen"]) == expected
    # Only a reward's name (the shop's catalogue, any length) may end in an ellipsis.
    problems = {
        key: [p for p in found if p != "shortened: RewardButton"]
        for key, found in layout["problems"].items()
    }
    problems = {key: found for key, found in problems.items() if found}
    assert problems == {}, json.dumps(problems, ensure_ascii=False, indent=1)


def test_screenshots_of_every_screen(reports: Callable[[str], dict[str, Any]]) -> None:
    import cv2

    layout = reports(SHOT_SIZE)
    assert sorted(layout["shots"]) == sorted(layout["seen"])
    for key, path in layout["shots"].items():
        image = cv2.imread(path)
        assert image is not None and image.shape[:2] == (480, 800), key
        assert float(image.std()) > 10, f"{key} is (nearly) uniform"


def test_the_result_icon_has_smooth_edges(reports: Callable[[str], dict[str, Any]]) -> None:
    """The window has no multisample buffers (they cost 30 MB): the icon's ring and cross
    soften their own edges, so they show no stairs."""
    import cv2
    import numpy as np

    image = cv2.imread(reports(SHOT_SIZE)["shots"]["refused_malformed_en"]).astype(float)
    ink, red = np.array(INK[2::-1]) * 255, np.array(NO_RED[2::-1]) * 255  # BGR
    inked = (np.abs(image - ink).max(axis=2) < 12).astype(np.uint8)
    stats = cv2.connectedComponentsWithStats(inked)[2]
    rings = [
        i
        for i, (_, _, w, h, _) in enumerate(stats)
        if i and w > 40 and 0.8 < w / h < 1.25  # the ring: wide, square; text is smaller
    ]
    assert rings, "no ring drawn on the refusal screen"
    x, y, w, h, _ = stats[max(rings, key=lambda i: stats[i][2] * stats[i][3])]
    box = image[y : y + h, x : x + w].reshape(-1, 3)
    # How far each pixel is from red towards the ink: an edge pixel lies in between.
    t = (box - red) @ (ink - red) / float((ink - red) @ (ink - red))
    on_the_way = np.abs(box - (red + np.outer(t, ink - red))).max(axis=1) < 12
    edges = int((on_the_way & (t > 0.15) & (t < 0.85)).sum())
    assert edges > 200, f"only {edges} blended edge pixels round the icon: stairs"


def test_the_locker_number_is_the_largest_text_on_the_pickup_screen(
    layout: dict[str, Any],
) -> None:
    for language, fonts in layout["pickup_fonts"].items():
        assert fonts["big_text"] == "12", language
        assert fonts["others"] and fonts["big"] > 1.5 * max(fonts["others"]), language


def test_offline_banner_comes_and_goes(layout: dict[str, Any]) -> None:
    assert layout["offline_text"] == {
        "zh_CN": "网络暂时断开：扫码照常使用，积分稍后更新",
        "en": "Working offline: scanning still works, points will update later",
    }
    assert layout["online_text"] == {"zh_CN": "", "en": ""}


def test_a_refused_phone_number_stays_with_a_big_message_beside_it(layout: dict[str, Any]) -> None:
    for language, bad in layout["join_bad"].items():
        assert bad["phone"] == "123 45", language  # as typed, grouped
        assert bad["message_font"] > bad["label_font"], language
        assert 0 <= bad["gap"] <= 20, language  # right above the number


def contrast(fg: list[float], bg: list[float]) -> float:
    """WCAG 2.x contrast ratio of `fg` (blended by its alpha) on an opaque `bg`."""

    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    def luminance(rgb: list[float]) -> float:
        r, g, b = (channel(c) for c in rgb[:3])
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    alpha = fg[3] if len(fg) > 3 else 1.0
    blended = [alpha * f + (1 - alpha) * b for f, b in zip(fg[:3], bg[:3], strict=True)]
    light, dark = sorted((luminance(blended), luminance(bg)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_contrast_formula() -> None:
    assert contrast([0, 0, 0, 1], [1, 1, 1, 1]) == pytest.approx(21.0)
    assert contrast([1, 1, 1, 1], [1, 1, 1, 1]) == pytest.approx(1.0)
    assert contrast([0.4627, 0.4627, 0.4627, 1], [1, 1, 1, 1]) == pytest.approx(4.54, abs=0.01)
    assert contrast([1, 1, 1, 0.5], [0, 0, 0, 1]) < contrast([1, 1, 1, 1], [0, 0, 0, 1])


def test_palette_pairs_reach_4_5_to_1() -> None:
    for fg, bg in (
        (INK, OK_GREEN),
        (INK, NO_RED),
        (NAVY, AMBER),
        (INK, NAVY),
        (AMBER, NAVY),
        (MUTED_ON_INK, INK),
        (OK_GREEN, INK),
    ):
        assert contrast(list(fg), list(bg)) >= 4.5, (fg, bg)


def test_hint_placeholder_countdown_and_done_reach_4_5_to_1(layout: dict[str, Any]) -> None:
    low = {
        name: round(contrast(fg, bg), 2)
        for name, (fg, bg) in layout["colours"].items()
        if contrast(fg, bg) < 4.5
    }
    assert low == {}
    assert len(layout["colours"]) == 11


def test_a_refusal_stays_longer_and_every_screen_goes_back(
    reports: Callable[[str], dict[str, Any]],
) -> None:
    times = reports(TIMED_SIZE)["timing"]
    # Lower bounds are the behaviour (a screen is not cut short, a refusal outstays a
    # success); the upper ones only say it went back at all on a busy machine.
    assert 0.8 <= times["success"] <= 8.0
    assert 2.2 <= times["refusal"] <= 10.0
    assert times["refusal"] > times["success"]
    for name in ("join", "joined", "staff"):
        assert 0.8 <= times[name] <= 8.0, name


if __name__ == "__main__":
    sys.exit(_driver_main(sys.argv[1:]))
