"""The result screen for campaign codes under a real X server (Xvfb): a code shown outside
its hours says when it is valid, a visit card says which use it was, in both languages.

Kivy's window is a process-wide singleton, so the app runs in a subprocess: this file is
also its driver (`python -m tests.test_screens_campaigns OUT`), as in
tests/test_screens_loyalty.py. The outcomes shown are the pure decisions' own, for codes
signed here; the screenshots are copied to /tmp/shots/ to look at.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kiosk.decisions import Decision, Facts, Rules, decide
from kiosk.screens.outcome import ERROR, Outcome
from o2o_protocol.codes import Code, verify_code
from tests.keys import Issuer
from tests.kivy_driver import on_ui, run_driver, wait_for

SHOTS = Path("/tmp/shots")
SHANGHAI = ZoneInfo("Asia/Shanghai")
HOURS = [{"days": [2, 3, 4, 5], "from": "14:00", "to": "17:00"}]
LANGS = ("zh_CN", "en")


def outcomes() -> dict[str, Outcome]:
    """A flash sale shown on a Monday morning, and a visit card's second use."""
    issuer = Issuer()
    now = time.time()

    def scan(when: str, facts: Facts, **fields: Any) -> Outcome:
        code = verify_code(
            issuer.code("c", "x1", **fields), issuer.public_keys, store="s1", now=now
        )
        assert isinstance(code, Code)
        at = datetime.fromisoformat(when).replace(tzinfo=SHANGHAI).timestamp()
        d = decide(code, facts, Rules(zone=SHANGHAI), now=at, today=when[:10])
        assert isinstance(d, Decision)
        reason = d.reason.value if d.reason else None
        return Outcome(d.event_type.value, reason, d.data, "ev-1")

    flash = {"cp": "flash", "cn": "下午茶半价", "ck": "flash_sale", "v": "半价", "hrs": HOURS}
    card = {"cp": "card", "cn": "春季团购", "ck": "visit_card", "v": "双人套餐", "uses": 3}
    return {
        "outside_hours": scan("2026-11-30 10:00", Facts(), **flash),
        "visit_card": scan("2026-11-30 10:00", Facts(coupon_used_at="t", coupon_uses=1), **card),
    }


class Backend:
    """Nothing to offer or rate here: the screens only show outcomes."""

    @staticmethod
    def _later(done: Callable[[Any], None], value: Any) -> None:
        from kivy.clock import Clock

        Clock.schedule_once(lambda _dt: done(value))

    def offer(self, member_id: str, done: Callable[[Any], None]) -> None:
        self._later(done, None)

    def redeem(self, member_id: str, reward_id: str, done: Callable[[Any], None]) -> None:
        self._later(done, Outcome(ERROR))

    def rate(self, subject: Any, rating: int, done: Callable[[Any], None]) -> None:
        self._later(done, Outcome(ERROR))

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
    from kiosk.config import UiSection
    from kiosk.ui import open_window

    if not open_window():
        raise SystemExit("driver: no display")
    from kivy.clock import Clock
    from kivy.core.window import Window
    from kivy.uix.label import Label

    from kiosk.screens.app import KioskApp

    app = KioskApp(UiSection(language="zh_CN", result_s=60))
    app.backend = Backend()
    report: dict[str, Any] = {"shots": {}}

    def labels() -> list[dict[str, Any]]:
        """The result screen's drawn texts: their boxes and what their text needs."""
        found = []
        for widget in app.root.get_screen("result").walk(restrict=True):
            if not isinstance(widget, Label) or not widget.text or widget.opacity == 0:
                continue
            x, y = widget.to_window(widget.x, widget.y)
            found.append(
                {
                    "text": widget.text,
                    "rect": [x, y, widget.width, widget.height],
                    "texture": list(widget.texture_size),
                }
            )
        return found

    def scenario() -> None:
        try:
            wait_for("the start screen", lambda: app.root.current == "start")
            for lang in LANGS:
                on_ui(lambda lang=lang: app.set_language(lang))
                for name, outcome in outcomes().items():
                    on_ui(lambda outcome=outcome: app.show_outcome(outcome))
                    wait_for("the result screen", lambda: app.root.current == "result")
                    wait_for("the end of a transition", lambda: not app.root.transition.is_active)
                    time.sleep(0.3)  # let labels and textures settle
                    screen = app.root.get_screen("result")
                    seen = on_ui(
                        lambda screen=screen: {
                            "ok": screen.ok,
                            "title": screen.title,
                            "detail": screen.detail,
                            "extra": screen.extra,
                            "labels": labels(),
                            "window": list(Window.size),
                        }
                    )
                    report[f"{name}_{lang}"] = seen

                    def take(shot: str = f"{name}_{lang}") -> str:
                        Window.dispatch("on_draw")
                        return str(Window.screenshot(name=str(out / f"campaign_{shot}.png")))

                    report["shots"][f"campaign_{name}_{lang}"] = on_ui(take)
        except BaseException:
            report["error"] = traceback.format_exc()
        finally:
            Clock.schedule_once(lambda _dt: app.stop())

    app.bind(on_start=lambda *_: threading.Thread(target=scenario, daemon=True).start())
    app.run()
    return report


def _driver_main(argv: list[str]) -> int:
    out = Path(argv[0])
    report = _drive(out)
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return 1 if "error" in report else 0


# --- the tests, in pytest's process -------------------------------------------------------


@pytest.fixture(scope="module")
def run(xvfb_display: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the scenario under Xvfb; the report (screenshots copied to /tmp/shots)."""
    out = tmp_path_factory.mktemp("campaigns")
    report = run_driver("tests.test_screens_campaigns", out, xvfb_display, "1024x600")
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in report["shots"].items():
        shutil.copyfile(path, SHOTS / f"{name}.png")
    return report


def test_outside_hours_says_when_the_code_is_valid(run: dict[str, Any]) -> None:
    zh, en = run["outside_hours_zh_CN"], run["outside_hours_en"]
    assert (zh["ok"], zh["title"], zh["detail"]) == (
        False,
        "不在优惠时段",
        "可用时段：周二至周五 14:00–17:00",
    )
    assert (en["ok"], en["title"], en["detail"]) == (
        False,
        "Not valid right now",
        "Valid Tue–Fri 14:00–17:00",
    )


def test_a_visit_card_names_its_campaign_value_and_use(run: dict[str, Any]) -> None:
    zh, en = run["visit_card_zh_CN"], run["visit_card_en"]
    assert (zh["ok"], zh["detail"], zh["extra"]) == (
        True,
        "春季团购 · 双人套餐",
        "第 2 次，共 3 次",
    )
    assert (en["ok"], en["detail"], en["extra"]) == (True, "春季团购 · 双人套餐", "Use 2 of 3")


@pytest.mark.parametrize("shown", ["outside_hours", "visit_card"])
@pytest.mark.parametrize("lang", LANGS)
def test_every_text_fits_its_box_on_the_screen_without_overlap(
    run: dict[str, Any], shown: str, lang: str
) -> None:
    seen = run[f"{shown}_{lang}"]
    width, height = seen["window"]
    texts = {seen["title"], seen["detail"], seen["extra"]} - {""}
    drawn = [lab for lab in seen["labels"] if lab["text"] in texts]
    assert {lab["text"] for lab in drawn} == texts  # each of them is on the screen
    for lab in drawn:
        x, y, w, h = lab["rect"]
        tw, th = lab["texture"]
        assert tw <= w + 1 and th <= h + 1, lab  # the text is not cut
        assert x >= 0 and y >= 0 and x + w <= width and y + h <= height, lab
    for i, a in enumerate(drawn):
        for b in drawn[i + 1 :]:
            ay, ah, by, bh = a["rect"][1], a["rect"][3], b["rect"][1], b["rect"][3]
            assert ay + ah <= by or by + bh <= ay, (a, b)  # stacked, never on each other


if __name__ == "__main__":
    raise SystemExit(_driver_main(sys.argv[1:]))
