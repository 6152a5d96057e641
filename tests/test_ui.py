"""The touch UI under a real X server (Xvfb), driven like a customer would.

Kivy's window is a process-wide singleton, so the app runs in a subprocess: this file is
also its driver (`python -m tests.test_ui CONFIG OUT`). The driver runs the real app
with a real `KioskRuntime` (offline: its broker URL points at a closed port), feeds signed
codes, taps buttons, records what the screens say and takes screenshots; the tests
below check that record and those screenshots.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiosk.commands import apply_command
from kiosk.i18n import LANGUAGES, Messages, load_catalog
from kiosk.loyalty import RatingSubject
from kiosk.screens.outcome import ERROR, LOADING, Outcome, describe
from o2o_protocol.messages import Reason
from tests import kivy_driver
from tests.keys import Issuer
from tests.kivy_driver import on_ui, wait_for
from tests.support import free_port, missing_component

REPO = Path(__file__).resolve().parent.parent
RESULT_S = 1.5
MEMBER_NAME = "王小明"
CAMPAIGN, VALUE = "开业酬宾", "满50减10"
JOIN_URL = "https://shop.example.com/join?store=s1"
PHONE, BAD_PHONE = "13800138000", "12345"
ORDER, ORDER_NAME, STAFF_NAME = "A-7", "李雷", "小张"
#: A reward in the kiosk's catalogue, and a member with points enough for it.
COFFEE = {"id": "coffee", "name": "咖啡", "name_en": "Coffee", "points": 10}
CAKE = {"id": "cake", "name": "蛋糕", "name_en": "Cake", "points": 500}
REGULAR, REGULAR_NAME, REGULAR_POINTS = "mem-2", "陈晨", 40
STAFF_SESSION_S = 7.0


# --- the driver, in the app's process ---------------------------------------------------


def _drive(config_path: Path, out: Path) -> dict[str, Any]:
    """Run the app, play the scenario, and return what was seen."""
    from kiosk.config import load_config
    from kiosk.runtime import KioskRuntime
    from kiosk.ui import create_app, open_window

    if not open_window():
        raise SystemExit("driver: no display")
    from kivy.clock import Clock
    from kivy.core.text import Label as CoreLabel
    from kivy.core.window import Window
    from kivy.resources import resource_find

    from o2o_protocol.messages import Command

    codes = json.loads((out / "codes.json").read_text(encoding="utf-8"))
    kiosk = KioskRuntime(load_config(config_path))
    order = {"order": ORDER, "name": ORDER_NAME, "size": "M"}
    apply_command(kiosk.db, Command(seq=1, name="preorder.upsert", data=order))
    for seq, (name, data) in enumerate(
        [
            ("rewards.set", {"rewards": [COFFEE, CAKE]}),
            ("pool.refill", {"kind": "voucher", "reward": "coffee", "codes": codes["vouchers"]}),
            ("member.upsert", {"id": REGULAR, "name": REGULAR_NAME, "points": REGULAR_POINTS}),
        ],
        start=2,
    ):
        apply_command(kiosk.db, Command(seq=seq, name=name, data=data))
    app, session = create_app(kiosk)
    report: dict[str, Any] = {}

    def screen() -> str:
        return str(on_ui(lambda: app.root.current))

    def tap(find: Callable[[], Any]) -> None:
        kivy_driver.tap(app, find)

    def shot(name: str) -> str:
        return kivy_driver.screenshot(app, out / f"{name}.png")

    def press_keys(digits: str, *, ok: bool = True) -> None:
        join = app.root.get_screen("join")
        for key in [*digits, "ok"] if ok else digits:
            tap(lambda key=key: join.ids[f"key_{key}"])

    def join_state() -> dict[str, Any]:
        join = app.root.get_screen("join")
        return {
            "screen": app.root.current,
            "message": join.ids.message.text,
            "phone": join.ids.phone.text,
            "digits": join.digits,
            "busy": join.busy,
        }

    def staff_state() -> dict[str, Any]:
        staff = app.root.get_screen("staff")
        return {
            "screen": app.root.current,
            "title": staff.ids.title.text,
            "preorders": staff.ids.preorders.text,
            "message": staff.ids.message.text,
            "status": staff.ids.status.text,
            "lockers": [b.text for b in staff.ids.lockers.children[::-1]],
            "min_button_h": min(
                [b.height for b in staff.ids.lockers.children]
                + [staff.ids.exit_button.height, staff.ids.reprint_button.height]
            ),
        }

    def staff_says(text: str) -> Callable[[], bool]:
        return lambda: app.root.current == "staff" and text in staff_state()["message"]

    def start_texts() -> dict[str, Any]:
        ids = app.root.get_screen("start").ids
        welcome = ids.welcome
        x, y = welcome.to_window(welcome.x, welcome.y)
        return {
            "welcome": welcome.text,
            "hint": ids.hint.text,
            "language_button": ids.language_button.text,
            "join_button": ids.join_button.text,
            "welcome_box": [x, y, welcome.width, welcome.height],
            "window": list(Window.size),
            "language": app.language,
        }

    def result() -> dict[str, Any]:
        s = app.root.get_screen("result")
        return {"ok": s.ok, "title": s.title, "detail": s.detail, "extra": s.extra}

    def panels() -> dict[str, Any]:
        s = app.root.get_screen("result")
        return {
            "rewards": [b.text for b in s.reward_buttons],
            "panel": list(s.panel_texts),
            "stars": len(s.star_buttons),
            "rating": list(s.rating_texts),
        }

    def reward_state(value: str) -> Callable[[], bool]:
        return lambda: app.root.get_screen("result").reward_state == value

    def on_result(pred: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
        return lambda: app.root.current == "result" and pred(result())

    def glyphs() -> dict[str, Any]:
        """Two different Chinese words: real glyphs differ, missing-glyph boxes do not."""
        roboto = resource_find("data/fonts/Roboto-Regular.ttf")

        def render(text: str, font: str | None) -> Any:
            label = CoreLabel(text=text, font_size=48, **({"font_name": font} if font else {}))
            label.refresh()
            return label.texture

        ours = [render(t, None) for t in ("欢迎光临", "会员积分")]
        fallback = [render(t, roboto) for t in ("欢迎光临", "会员积分")]
        return {
            "ours_differ": ours[0].pixels != ours[1].pixels,
            "fallback_same": fallback[0].pixels == fallback[1].pixels,
            "ours_width": ours[0].width,
            "latin_width": render("ABCD", None).width,
        }

    def scenario() -> None:
        try:
            wait_for("the start screen", lambda: app.root.current == "start")
            report["start_zh"] = on_ui(start_texts)
            report["shot_start_zh"] = shot("start_zh")

            session.submit(codes["member"])
            shown = wait_for("the check-in", on_result(lambda r: MEMBER_NAME in r["title"]))
            report["checkin"] = on_ui(result)
            wait_for("the rewards on offer", reward_state("offer"))
            report["checkin_panels"] = on_ui(panels)
            report["shot_checkin"] = shot("result_checkin")
            back = wait_for("the start screen again", lambda: app.root.current == "start")
            report["returned_after_s"] = back - shown

            session.submit(codes["coupon"])
            wait_for("the coupon", on_result(lambda r: r["ok"]))
            report["coupon"] = on_ui(result)
            wait_for("the start screen again", lambda: app.root.current == "start")

            session.submit(codes["coupon"])
            shown = wait_for("the refusal", on_result(lambda r: not r["ok"]))
            report["coupon_again"] = on_ui(result)
            tap(lambda: app.root.get_screen("result"))
            back = wait_for("a touch to go back", lambda: app.root.current == "start", 1.0)
            report["touch_returned_after_s"] = back - shown

            # A regular spends points on a coffee and rates the visit, through the runtime.
            session.submit(codes["regular"])
            wait_for("the regular's offer", reward_state("offer"))
            report["regular_offer"] = on_ui(panels)
            tap(lambda: app.root.get_screen("result").reward_buttons[0])
            wait_for("the confirm step", reward_state("confirm"))
            tap(lambda: app.root.get_screen("result").confirm_buttons["yes"])
            wait_for("the voucher", reward_state("done"))
            report["regular_redeemed"] = on_ui(panels)
            tap(lambda: app.root.get_screen("result").star_buttons[4])
            wait_for("the thanks", lambda: app.root.get_screen("result").rating_state == "done")
            report["regular_rated"] = on_ui(panels)
            report["shot_regular"] = shot("result_regular")
            wait_for("the start screen again", lambda: app.root.current == "start")

            # The runtime refuses a rating outside 1-5 by raising: the session answers None
            # (the screen then says the rating was not saved) and the kiosk carries on.
            answers: dict[str, Any] = {}
            bad = RatingSubject("checkin", "ev-x", member_id=REGULAR)
            on_ui(lambda: session.rate(bad, 6, lambda v: answers.setdefault("rate", v)))
            wait_for("the session's answer", lambda: "rate" in answers)
            report["bad_rating_answer"] = repr(answers["rate"])

            tap(lambda: app.root.get_screen("start").ids.join_button)
            wait_for("the join screen", lambda: app.root.current == "join")
            join = app.root.get_screen("join")
            report["join"] = on_ui(
                lambda: {
                    "has_qr": join.has_qr,
                    "qr_size": list(join.qr_texture.size) if join.qr_texture else None,
                    "hint": join.ids.hint.text,
                }
            )
            report["shot_join"] = shot("join")
            report["key_heights"] = on_ui(
                lambda: [w.height for w in join.ids.keypad.children] + [join.ids.key_ok.width]
            )
            tap(lambda: join.ids.title)  # a missed key: stays, keeps what was typed
            report["join_after_stray_touch"] = screen()

            zh = Messages("zh_CN")
            press_keys(BAD_PHONE)
            wait_for("the bad number", lambda: join_state()["message"] == zh.get("join.bad_phone"))
            report["join_bad"] = on_ui(join_state)
            report["shot_join_bad"] = shot("join_bad")
            for _ in BAD_PHONE:  # the refused number stays: delete it to type another
                tap(lambda: join.ids.key_back)
            report["join_deleted"] = on_ui(join_state)

            press_keys(PHONE[:4], ok=False)
            report["join_typing"] = on_ui(join_state)
            tap(lambda: join.ids.key_back)
            press_keys(PHONE[3:], ok=False)
            report["join_full"] = on_ui(join_state)
            tap(lambda: join.ids.key_ok)
            wait_for("the joined screen", lambda: app.root.current == "joined")
            joined = app.root.get_screen("joined")
            report["joined"] = on_ui(
                lambda: {
                    "title": joined.ids.title.text,
                    "hint": joined.ids.hint.text,
                    "has_qr": joined.has_qr,
                    "join_phone": join.ids.phone.text,
                }
            )
            report["shot_joined"] = shot("joined")
            tap(lambda: joined.ids.done_button)
            wait_for("start after joining", lambda: app.root.current == "start")

            session.submit(codes["staff"])
            login = wait_for("the staff screen", lambda: ORDER in staff_state()["preorders"])
            report["staff"] = on_ui(staff_state)
            report["shot_staff"] = shot("staff")

            session.submit(codes["pickup"])
            wait_for(
                "the locker opening", staff_says(zh.get("staff.loading", locker=1, order=ORDER))
            )
            report["staff_loading"] = on_ui(staff_state)
            report["shot_staff_loading"] = shot("staff_loading")
            loaded_text = zh.get("staff.loaded", locker=1, order=ORDER)
            wait_for("the door to shut", staff_says(loaded_text))
            wait_for("locker 1 to show the order", lambda: ORDER in staff_state()["lockers"][0])
            report["staff_loaded"] = on_ui(staff_state)

            tap(lambda: app.root.get_screen("staff").ids.lockers.children[-2])  # locker 2
            wait_for("locker 2 to open", staff_says(zh.get("staff.opened", locker=2)))
            report["staff_opened"] = on_ui(staff_state)

            tap(lambda: app.root.get_screen("staff").ids.reprint_button)
            wait_for("the reprint", staff_says(zh.get("staff.reprinted", title="")))
            report["staff_reprint"] = on_ui(staff_state)
            report["shot_staff_reprint"] = shot("staff_reprint")

            back = wait_for("the end of the staff session", lambda: app.root.current == "start", 15)
            report["staff_returned_after_s"] = back - login
            report["staff_active_after"] = kiosk.staff_active()

            tap(lambda: app.root.get_screen("start").ids.language_button)
            wait_for("English", lambda: app.language == "en")
            report["start_en"] = on_ui(start_texts)
            report["shot_start_en"] = shot("start_en")
            report["glyphs"] = on_ui(glyphs)
            report["screen_at_end"] = screen()
        except BaseException:
            report["error"] = traceback.format_exc()
        finally:
            Clock.schedule_once(lambda _dt: app.stop())

    app.bind(on_start=lambda *_: threading.Thread(target=scenario, daemon=True).start())
    app.run()
    session.stop()
    return report


def _driver_main(argv: list[str]) -> int:
    config_path, out = Path(argv[0]), Path(argv[1])
    report = _drive(config_path, out)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return 1 if "error" in report else 0


# --- the tests, in pytest's process -------------------------------------------------------


def _write_config(directory: Path, issuer: Issuer) -> Path:
    keys = "\n".join(f'{kid} = "{key}"' for kid, key in issuer.config_keys.items())
    path = directory / "kiosk-k1.toml"
    path.write_text(
        f"""store = "{issuer.store}"
kiosk = "k1"
data_dir = "data"

[keys]
{keys}

[mqtt]
url = "mqtt://127.0.0.1:{free_port()}"

[ui]
language = "zh_CN"
result_s = {RESULT_S}
join_url = "{JOIN_URL}"

[rules]
staff_session_s = {STAFF_SESSION_S}

[lockers]
sim_close_after_s = 1.0
""",
        encoding="utf-8",
    )
    (directory / "data").mkdir(exist_ok=True)
    return path


def _kivy_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KIVY_NO_ARGS="1",
        KIVY_NO_CONSOLELOG="1",
        KIVY_WINDOW="sdl2",
        KIVY_HOME=str(home),
        LIBGL_ALWAYS_SOFTWARE="1",
        PYTHONPATH=str(REPO),
    )
    return env


def _need_kivy() -> None:
    # find_spec, not import: importing Kivy here would reconfigure pytest's logging.
    if importlib.util.find_spec("kivy") is None:
        missing_component("Kivy", "pip install -e '.[kiosk]', or run scripts/setup.sh")


@pytest.fixture(scope="module")
def ui_run(xvfb_display: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the scenario under Xvfb; the report, plus `out` (the screenshots' dir)."""
    _need_kivy()
    out = tmp_path_factory.mktemp("ui")
    issuer = Issuer()
    config = _write_config(out, issuer)
    year = int(time.time()) + 365 * 86400  # a voucher about to expire is not offered
    codes = {
        "member": issuer.code("m", "mem-1", n=MEMBER_NAME),
        "coupon": issuer.code("c", "cpn-1", cp=CAMPAIGN, v=VALUE),
        "staff": issuer.code("s", "staff-1", n=STAFF_NAME),
        "pickup": issuer.code("p", "pk-1", o=ORDER),
        "regular": issuer.code("m", REGULAR, n=REGULAR_NAME),
        "vouchers": [
            {
                "id": f"v{i}",
                "code": issuer.code("c", f"v{i}", cp="reward:coffee", v="咖啡", exp=year),
            }
            for i in (1, 2)
        ],
    }
    (out / "codes.json").write_text(json.dumps(codes), encoding="utf-8")
    env = _kivy_env(out / "kivy-home")
    env.update(DISPLAY=xvfb_display, SDL_VIDEODRIVER="x11", O2O_UI_WINDOW="1024x600")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.test_ui", str(config), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    report_path = out / "report.json"
    if not report_path.exists():
        pytest.fail(f"the UI driver crashed (status {proc.returncode}):\n{proc.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    assert "error" not in report, f"{report['error']}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    report["out"] = str(out)
    report["store"] = issuer.store
    report["stderr"] = proc.stderr
    return report


def test_checkin_shows_member_name_and_points(ui_run: dict[str, Any]) -> None:
    checkin = ui_run["checkin"]
    assert checkin["ok"] is True
    assert MEMBER_NAME in checkin["title"]
    assert "10" in checkin["detail"]  # +10 this visit, 10 in total (default rules)
    # A first visit: a welcome, not a welcome back.
    zh = Messages()
    assert checkin["title"] == zh.get("result.checkin.title_first", name=MEMBER_NAME)
    assert checkin == {**checkin, "extra": zh.get("result.checkin.first_visit")}


def test_rewards_and_a_rating_through_the_kiosk_runtime(ui_run: dict[str, Any]) -> None:
    """The result screen wired to the real runtime: what it offers, spends and rates is
    what the kiosk recorded (and will send to the bridge)."""
    zh = Messages("zh_CN")
    # 10 points after the first visit: the coffee (10), not the cake (500).
    assert ui_run["checkin_panels"]["rewards"] == ["咖啡 · 10 分"]
    assert ui_run["checkin_panels"]["stars"] == 5
    balance = REGULAR_POINTS + 10
    assert ui_run["regular_offer"]["panel"] == [zh.get("reward.title"), f"当前积分 {balance}"]
    assert ui_run["regular_redeemed"]["panel"] == [
        zh.get("reward.done.title"),
        zh.get("reward.done.detail"),
        zh.get("reward.balance_left", balance=balance - 10),
    ]
    assert ui_run["regular_rated"]["rating"] == [zh.get("rating.thanks")]

    history = _history(ui_run)
    [visit] = [e for e in history if e["type"] == "checkin" and e["data"]["member_id"] == REGULAR]
    [spent] = [e for e in history if e["type"] == "points.redeemed"]
    assert spent["data"] == {
        **spent["data"],
        "member_id": REGULAR,
        "reward_id": "coffee",
        "points": 10,
        "balance": balance - 10,
        "voucher_id": "v1",
    }
    assert ui_run["bad_rating_answer"] == "None"  # and the scenario went on
    assert "could not record a rating of checkin: ValueError" in ui_run["stderr"]
    [rating] = [e for e in history if e["type"] == "review.submitted"]
    assert rating["data"] == {
        "rating": 5,
        "subject": "checkin",
        "event": visit["id"],
        "member_id": REGULAR,
    }


def test_coupon_twice_is_already_used(ui_run: dict[str, Any]) -> None:
    zh = Messages("zh_CN")
    assert ui_run["coupon"]["ok"] is True
    assert ui_run["coupon"]["title"] == zh.get("result.coupon.title")
    assert CAMPAIGN in ui_run["coupon"]["detail"] and VALUE in ui_run["coupon"]["detail"]
    again = ui_run["coupon_again"]
    assert again["ok"] is False
    assert again["title"] == zh.get("reason.already_used.coupon.title")


def test_result_goes_back_to_start_by_itself_and_on_touch(ui_run: dict[str, Any]) -> None:
    # Measured from when the driver saw the result, which lags the switch by a frame or so.
    assert RESULT_S * 0.5 <= ui_run["returned_after_s"] <= RESULT_S + 3
    assert ui_run["touch_returned_after_s"] < RESULT_S


def test_join_screen_shows_a_qr(ui_run: dict[str, Any]) -> None:
    join = ui_run["join"]
    assert join["has_qr"] is True
    assert join["qr_size"] and join["qr_size"][0] == join["qr_size"][1] >= 21 * 8
    assert join["hint"] == Messages("zh_CN").get("join.hint")
    # The QR as drawn on the screen reads back as the sign-up URL.
    import cv2

    from kiosk.devices.qr import QrDecoder

    screenshot = cv2.imread(ui_run["shot_join"])
    assert [d.text for d in QrDecoder().decode(screenshot)] == [JOIN_URL]


def _decode(path: str) -> list[str]:
    import cv2

    from kiosk.devices.qr import QrDecoder

    return [d.text for d in QrDecoder().decode(cv2.imread(path))]


def _history(ui_run: dict[str, Any]) -> list[dict[str, Any]]:
    from kiosk.localdb import KioskDB

    store = KioskDB(Path(ui_run["out"]) / "data", store=ui_run["store"], kiosk="k1")
    try:
        return store.history(100)
    finally:
        store.close()


def test_join_by_phone_records_a_member_and_shows_its_qr(ui_run: dict[str, Any]) -> None:
    from urllib.parse import parse_qs, urlsplit

    from kiosk.decisions import phone_hash
    from kiosk.localdb import KioskDB

    zh = Messages("zh_CN")
    assert min(ui_run["key_heights"]) >= 80
    assert ui_run["join_after_stray_touch"] == "join"  # a missed key does not leave
    assert ui_run["join_typing"]["phone"] == "138 0"
    assert ui_run["join_full"]["phone"] == "138 0013 8000"
    assert ui_run["join_deleted"]["phone"] == zh.get("join.phone_placeholder")
    joined = ui_run["joined"]
    # Gone from the join screen once the member joined: the next person must not read it.
    assert joined["join_phone"] == zh.get("join.phone_placeholder")
    assert joined["title"] == zh.get("joined.title") and joined["has_qr"] is True
    assert joined["hint"] == zh.get("joined.hint")

    [url] = _decode(ui_run["shot_joined"])
    assert url.startswith(JOIN_URL + "&j=")
    member_id = parse_qs(urlsplit(url).query)["j"][0]
    [event] = [e for e in _history(ui_run) if e["type"] == "member.joined"]
    assert event["data"]["member_id"] == member_id and event["data"]["known"] is False
    hashed = phone_hash(PHONE, f"o2o:{ui_run['store']}")  # no join_secret in this config
    assert event["data"]["phone_hash"] == hashed
    store = KioskDB(Path(ui_run["out"]) / "data", store=ui_run["store"], kiosk="k1")
    try:
        assert store.member_by_phone(hashed) == member_id
    finally:
        store.close()
    # The number itself is nowhere: not in the kiosk's files, not in its logs.
    files = [f for f in (Path(ui_run["out"]) / "data").rglob("*") if f.is_file()]
    assert files
    for f in files:
        assert PHONE.encode() not in f.read_bytes(), f
    assert PHONE not in ui_run["stderr"] and "138 0013" not in ui_run["stderr"]


def test_bad_phone_number_says_so_and_stays(ui_run: dict[str, Any]) -> None:
    bad = ui_run["join_bad"]
    assert bad["screen"] == "join" and bad["busy"] is False
    assert bad["message"] == Messages("zh_CN").get("join.bad_phone")
    # Kept as typed, so one wrong digit is one key to fix, not the whole number again.
    assert bad["digits"] == BAD_PHONE and bad["phone"] == "123 45"


def test_staff_code_shows_the_staff_screen(ui_run: dict[str, Any]) -> None:
    zh = Messages("zh_CN")
    staff = ui_run["staff"]
    assert staff["screen"] == "staff" and STAFF_NAME in staff["title"]
    assert ORDER in staff["preorders"] and ORDER_NAME in staff["preorders"]
    assert staff["message"] == zh.get("staff.load_hint")
    assert staff["lockers"] == [
        f"{zh.get('staff.locker', number=n)}\n{zh.get('staff.locker.free')}" for n in (1, 2, 3, 4)
    ]
    assert staff["min_button_h"] >= 80
    assert (
        zh.get("staff.printer.ok") in staff["status"] and zh.get("staff.offline") in staff["status"]
    )
    # A pickup code scanned in staff mode loads the order: open, then loaded on close.
    assert ui_run["staff_loading"]["message"] == zh.get("staff.loading", locker=1, order=ORDER)
    assert zh.get("staff.locker.open") in ui_run["staff_loading"]["lockers"][0]
    loaded = ui_run["staff_loaded"]
    assert loaded["message"] == zh.get("staff.loaded", locker=1, order=ORDER)
    assert loaded["preorders"] == zh.get("staff.preorders_none")
    assert ui_run["staff_opened"]["message"] == zh.get("staff.opened", locker=2)
    # Reprint: the newest event with a receipt is the join.
    title = zh.get("staff.reprinted", title="欢迎加入会员")
    assert ui_run["staff_reprint"]["message"] == title

    history = _history(ui_run)
    [action] = [e for e in history if e["type"] == "staff.action"]
    assert action["data"] == {**action["data"], "locker": 2, "opened": True, "source": "staff"}
    [load] = [e for e in history if e["type"] == "locker.loaded"]
    assert load["data"]["order"] == ORDER and load["data"]["locker"] == 1


def test_staff_screen_ends_with_the_staff_session(ui_run: dict[str, Any]) -> None:
    assert STAFF_SESSION_S - 1 <= ui_run["staff_returned_after_s"] <= STAFF_SESSION_S + 3
    assert ui_run["staff_active_after"] is False


def test_screenshots_are_whole_screens_not_mid_fade(ui_run: dict[str, Any]) -> None:
    """A fade caught half-way blends two screens; every background pixel must be pure."""
    import cv2

    from kiosk.screens.palette import NAVY, OK_GREEN

    def bgr(rgba: tuple[float, ...]) -> tuple[int, ...]:
        return tuple(round(c * 255) for c in reversed(rgba[:3]))

    backgrounds = {  # NAVY, OK_GREEN, and the staff screen's slate from staff.kv
        "shot_join": bgr(NAVY),
        "shot_join_bad": bgr(NAVY),
        "shot_joined": bgr(OK_GREEN),
        "shot_staff": (56, 41, 31),
        "shot_staff_reprint": (56, 41, 31),
    }
    for key, colour in backgrounds.items():
        image = cv2.imread(ui_run[key])
        assert image.shape[:2] == (600, 1024), key
        for x, y in ((6, 300), (6, 580), (1018, 580)):
            assert tuple(int(v) for v in image[y, x]) == pytest.approx(colour, abs=2), (key, x, y)


def test_language_toggle_switches_the_start_screen(ui_run: dict[str, Any]) -> None:
    zh, en = ui_run["start_zh"], ui_run["start_en"]
    assert zh["language"] == "zh_CN" and en["language"] == "en"
    assert zh["welcome"] == Messages("zh_CN").get("start.welcome")
    assert en["welcome"] == Messages("en").get("start.welcome")
    assert en["hint"] == Messages("en").get("start.hint") != zh["hint"]
    assert ui_run["screen_at_end"] == "start"


def test_chinese_glyphs_render(ui_run: dict[str, Any]) -> None:
    import cv2
    import numpy as np

    glyphs = ui_run["glyphs"]
    assert glyphs["fallback_same"], "the check itself: Roboto draws every CJK word alike"
    assert glyphs["ours_differ"], "Chinese words render identically: missing glyphs (boxes)"
    assert glyphs["ours_width"] > glyphs["latin_width"] * 1.3  # 4 ideographs vs "ABCD"

    shots = {}
    for key in (
        "shot_start_zh",
        "shot_start_en",
        "shot_checkin",
        "shot_join",
        "shot_join_bad",
        "shot_joined",
        "shot_staff",
        "shot_staff_loading",
    ):
        image = cv2.imread(ui_run[key])
        assert image is not None, f"{ui_run[key]} is not an image"
        assert image.shape[:2] == (600, 1024)
        assert float(image.std()) > 10, f"{ui_run[key]} is (nearly) uniform"
        shots[key] = image
    # The welcome label: ink on background, and not the same picture in both languages.
    x, y, w, h = (int(v) for v in ui_run["start_zh"]["welcome_box"])
    top = 600 - (y + h)
    zh_title = shots["shot_start_zh"][top : top + h, x : x + w]
    en_title = shots["shot_start_en"][top : top + h, x : x + w]
    gray = cv2.cvtColor(zh_title, cv2.COLOR_BGR2GRAY)
    ink = np.count_nonzero(gray > 200)
    assert 0.01 * gray.size < ink < 0.5 * gray.size, "no text drawn in the title"
    assert not np.array_equal(zh_title, en_title)


def test_every_reason_has_a_customer_message() -> None:
    assert set(load_catalog("zh_CN")) == set(load_catalog("en"))
    for language in LANGUAGES:
        m = Messages(language)
        titles = set()
        for reason in Reason:
            text = describe(Outcome("scan.rejected", reason.value, {"reason": reason}), m)
            assert not text.ok and text.title and text.detail
            assert text.title != m.get("reason.other.title"), reason
            titles.add(text.title)
        assert len(titles) >= len(Reason) - 2  # a few share a wording on purpose
        assert describe(Outcome(ERROR), m).ok is False
        assert describe(Outcome("pickup.failed", None, {"locker": 2}), m).ok is False
        loading = describe(Outcome(LOADING, None, {"locker": 3, "order": "A-7"}), m)
        assert loading.ok and "3" in loading.title and "A-7" in loading.detail
        reservation = describe(
            Outcome("reservation.arrived", None, {"service": "剪发", "timing": "late"}), m
        )
        assert reservation.detail == "剪发" and reservation.extra == m.get(
            "result.reservation.late"
        )


def test_no_display_exits_2_with_one_line(tmp_path: Path) -> None:
    _need_kivy()
    config = _write_config(tmp_path, Issuer())
    frames = tmp_path / "frames"
    frames.mkdir()
    env = _kivy_env(tmp_path / "kivy-home")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER", "KIVY_NO_CONSOLELOG"):
        env.pop(name, None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiosk.cli",
            "run",
            "--config",
            str(config),
            "--camera",
            str(frames),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "o2o-kiosk: error: no display for the touch UI: set DISPLAY or use --headless"
    )


if __name__ == "__main__":
    sys.exit(_driver_main(sys.argv[1:]))
