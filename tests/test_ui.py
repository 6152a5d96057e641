"""The touch UI under a real X server (Xvfb), driven like a customer would.

Kivy's window is a process-wide singleton, so the app runs in a subprocess: this file is
also its driver (`python -m tests.test_ui CONFIG OUT`). The driver runs the real app
with a real `Kiosk` (offline: its broker URL points at a closed port), feeds signed
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

from kiosk.i18n import LANGUAGES, Messages, load_catalog
from kiosk.screens.outcome import ERROR, LOADING, Outcome, describe
from o2o_protocol.messages import Reason
from tests.keys import Issuer
from tests.support import free_port, missing_component

REPO = Path(__file__).resolve().parent.parent
RESULT_S = 1.5
MEMBER_NAME = "王小明"
CAMPAIGN, VALUE = "开业酬宾", "满50减10"
JOIN_URL = "https://shop.example.com/join?store=s1"


# --- the driver, in the app's process ---------------------------------------------------


def _drive(config_path: Path, out: Path) -> dict[str, Any]:
    """Run the app, play the scenario, and return what was seen."""
    from kiosk.app import Kiosk
    from kiosk.config import load_config
    from kiosk.ui import create_app, open_window

    if not open_window():
        raise SystemExit("driver: no display")
    from kivy.clock import Clock
    from kivy.core.text import Label as CoreLabel
    from kivy.core.window import Window
    from kivy.resources import resource_find
    from kivy.tests.common import UnitTestTouch

    codes = json.loads((out / "codes.json").read_text(encoding="utf-8"))
    app, session = create_app(Kiosk(load_config(config_path)))
    report: dict[str, Any] = {}

    def on_ui(fn: Callable[[], Any]) -> Any:
        done, box = threading.Event(), {}

        def call(_dt: float) -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        Clock.schedule_once(call)
        if not done.wait(10):
            raise TimeoutError("the UI thread did not answer within 10 s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def wait_for(what: str, pred: Callable[[], bool], timeout: float = 10.0) -> float:
        start = time.monotonic()
        while not on_ui(pred):
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"waited {timeout} s for {what}")
            time.sleep(0.03)
        return time.monotonic()

    def screen() -> str:
        return str(on_ui(lambda: app.root.current))

    def tap(find: Callable[[], Any]) -> None:
        # The screen manager ignores touches while it fades between screens.
        wait_for("the end of a transition", lambda: not app.root.transition.is_active)

        def do() -> None:
            x, y = find().to_window(*find().center)
            touch = UnitTestTouch(x, y)
            touch.touch_down()
            touch.touch_up()

        on_ui(do)

    def shot(name: str) -> str:
        time.sleep(0.4)  # let the fade finish and a frame reach the screen
        return str(on_ui(lambda: Window.screenshot(name=str(out / f"{name}.png"))))

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
            tap(lambda: join.ids.title)
            wait_for("a touch on the join screen", lambda: app.root.current == "start", 1.0)

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
        missing_component("Kivy", "pip install -e '.[ui]', or run scripts/setup.sh")


@pytest.fixture(scope="module")
def ui_run(xvfb_display: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the scenario under Xvfb; the report, plus `out` (the screenshots' dir)."""
    _need_kivy()
    out = tmp_path_factory.mktemp("ui")
    issuer = Issuer()
    config = _write_config(out, issuer)
    codes = {
        "member": issuer.code("m", "mem-1", n=MEMBER_NAME),
        "coupon": issuer.code("c", "cpn-1", cp=CAMPAIGN, v=VALUE),
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
    return report


def test_checkin_shows_member_name_and_points(ui_run: dict[str, Any]) -> None:
    checkin = ui_run["checkin"]
    assert checkin["ok"] is True
    assert MEMBER_NAME in checkin["title"]
    assert "10" in checkin["detail"]  # +10 this visit, 10 in total (default rules)
    assert checkin == {**checkin, "extra": Messages().get("result.checkin.visits", visits=1)}


def test_coupon_twice_is_already_used(ui_run: dict[str, Any]) -> None:
    zh = Messages("zh_CN")
    assert ui_run["coupon"]["ok"] is True
    assert ui_run["coupon"]["title"] == zh.get("result.coupon.title")
    assert CAMPAIGN in ui_run["coupon"]["detail"] and VALUE in ui_run["coupon"]["detail"]
    again = ui_run["coupon_again"]
    assert again["ok"] is False
    assert again["title"] == zh.get("reason.already_used.title")


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
    for key in ("shot_start_zh", "shot_start_en", "shot_checkin", "shot_join"):
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
