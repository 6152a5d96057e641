"""What the touch UI keeps between customers, under a real X server (Xvfb): the seldom
shown screens are built when shown and gone once left, and the result screen's rating row
is shown again for the next customer, its stars empty.

Kivy's window is a process-wide singleton, so the app runs in a subprocess: this file is
also its driver (`python -m tests.test_screens_memory OUT`), as in
tests/test_screens_campaigns.py. bench/bench_ui.py measures the memory itself.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import traceback
import weakref
from pathlib import Path
from typing import Any

import pytest

from kiosk.screens.outcome import Outcome
from o2o_protocol.messages import EventType
from tests.kivy_driver import on_ui, run_driver, wait_for


def checkin(event_id: str) -> Outcome:
    data = {"member_id": "m-1", "name": "Li", "points_earned": 10, "points": 40, "visits": 3}
    return Outcome(EventType.CHECKIN, None, {**data, "counted": True}, event_id)


def _drive(out: Path) -> dict[str, Any]:
    from kiosk.config import UiSection
    from kiosk.ui import open_window

    if not open_window():
        raise SystemExit("driver: no display")
    from kivy.clock import Clock

    from kiosk.screens.app import KioskApp

    app = KioskApp(UiSection(language="en", result_s=30))
    report: dict[str, Any] = {}

    def home() -> None:
        on_ui(app.go_home)
        wait_for("the start screen", lambda: app.root.current == "start")
        wait_for("the end of a transition", lambda: not app.root.transition.is_active)

    def scenario() -> None:
        try:
            wait_for("the start screen", lambda: app.root.current == "start")
            report["built_at_start"] = on_ui(lambda: list(app.root.screen_names))
            left = []
            for _ in range(2):
                on_ui(app.show_join)
                wait_for("the join screen", lambda: app.root.current == "join")
                join = on_ui(lambda: app.root.get_screen("join"))
                report.setdefault("digits_shown", []).append(on_ui(lambda join=join: join.digits))
                on_ui(lambda join=join: (join.press("1"), join.press("3")))
                left.append(weakref.ref(join))
                del join
                home()
                # The next screen change lets the last screen left go from the transition.
                on_ui(lambda: app.show_outcome(checkin(f"ev-{len(left)}")))
                wait_for("the result screen", lambda: app.root.current == "result")
                home()
            wait_for("the join screen to go", lambda: not app.root.has_screen("join"))
            on_ui(gc.collect)
            report["join_screens_alive"] = [ref() is not None for ref in left]

            result = on_ui(lambda: app.root.get_screen("result"))
            on_ui(lambda: app.show_outcome(checkin("ev-a")))
            wait_for("the result screen", lambda: app.root.current == "result")
            first = on_ui(lambda: [id(star) for star in result.star_buttons])
            on_ui(lambda: result.rate(result.star_buttons[3]))  # no backend: "not saved"
            wait_for("the answer", lambda: result.rating_state == "done")
            on_ui(lambda: app.show_outcome(checkin("ev-b")))
            wait_for("the stars again", lambda: result.rating_state == "ask")
            report["stars_again"] = on_ui(
                lambda: {
                    "same_widgets": [id(star) for star in result.star_buttons] == first,
                    "lit": [bool(star.lit) for star in result.star_buttons],
                    "disabled": [bool(star.disabled) for star in result.star_buttons],
                    "shown": all(s.get_root_window() is not None for s in result.star_buttons),
                }
            )
            report["strokes"] = on_ui(lambda: _strokes(app))
        except BaseException:
            report["error"] = traceback.format_exc()
        finally:
            Clock.schedule_once(lambda _dt: app.stop())

    app.bind(on_start=lambda *_: threading.Thread(target=scenario, daemon=True).start())
    app.run()
    return report


def _strokes(app: Any) -> dict[str, int]:
    """The start and result screens' `RoundLine` strokes, and how many of them are drawn
    more than once (each is one textured rectangle; a second copy hardens its edges)."""
    from kivy.graphics import Canvas

    from kiosk.screens.shapes import RoundLine

    def every(instruction: Any) -> Any:
        """The instruction and all it holds (a widget's canvas holds its children's)."""
        yield instruction
        if isinstance(instruction, Canvas):
            yield from every(instruction.before)
            for child in instruction.children:
                yield from every(child)
            yield from every(instruction.after)
        else:
            for child in getattr(instruction, "children", ()):
                yield from every(child)

    drawn = [i for name in ("start", "result") for i in every(app.root.get_screen(name).canvas)]
    strokes = [i for i in drawn if isinstance(i, RoundLine)]
    twice = [line for line in strokes if sum(i is line._rect for i in drawn) != 1]
    return {"strokes": len(strokes), "drawn_twice": len(twice)}


def _driver_main(argv: list[str]) -> int:
    out = Path(argv[0])
    report = _drive(out)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return 1 if "error" in report else 0


# --- the tests, in pytest's process -------------------------------------------------------


@pytest.fixture(scope="module")
def run(xvfb_display: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("memory")
    return run_driver("tests.test_screens_memory", out, xvfb_display, "800x480")


def test_seldom_shown_screens_are_built_when_shown_and_gone_once_left(
    run: dict[str, Any],
) -> None:
    assert run["built_at_start"] == ["start", "result"]
    assert run["join_screens_alive"] == [False, False]
    assert run["digits_shown"] == ["", ""]  # each visit starts from an empty keypad


def test_each_stroke_is_drawn_once(run: dict[str, Any]) -> None:
    """The icons', stars' and scan frame's strokes soften their own edges: one drawing
    each, or the edges come out hard."""
    assert run["strokes"]["strokes"] >= 10
    assert run["strokes"]["drawn_twice"] == 0


def test_the_next_customer_gets_the_same_stars_empty(run: dict[str, Any]) -> None:
    assert run["stars_again"] == {
        "same_widgets": True,
        "lit": [False] * 5,
        "disabled": [False] * 5,
        "shown": True,
    }


if __name__ == "__main__":
    raise SystemExit(_driver_main(sys.argv[1:]))
