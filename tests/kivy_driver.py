"""Driving the real Kivy app from a scenario thread, as the Xvfb drivers of test_ui.py,
test_screens_loyalty.py and test_screens_campaigns.py do (each in its own subprocess:
Kivy's window is one per process). Kivy is imported only when a driver calls in, so test
collection never opens a window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def on_ui(fn: Callable[[], Any]) -> Any:
    """Run `fn` on the UI thread and hand back its result (or raise what it raised)."""
    from kivy.clock import Clock

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
    """Poll `pred` on the UI thread until it holds; when it did (monotonic seconds)."""
    start = time.monotonic()
    while not on_ui(pred):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.03)
    return time.monotonic()


def settled(app: Any) -> None:
    """The screen manager ignores touches (and shows a half-faded frame) mid-transition."""
    wait_for("the end of a transition", lambda: not app.root.transition.is_active)


def tap(app: Any, find: Callable[[], Any]) -> float:
    """A finger down and up on the centre of the widget `find` returns; when it was.

    Waits until the widget holds still first: a panel that has just appeared is laid out
    over the next frames (a title that shrinks its font to fit moves what is below it),
    and a finger aimed at where a button was a frame ago lands beside it.
    """
    from kivy.tests.common import UnitTestTouch

    settled(app)

    def where() -> tuple[int, int, int, int]:
        widget = find()
        x, y = widget.to_window(*widget.center)
        return round(x), round(y), round(widget.width), round(widget.height)

    seen = [on_ui(where)]
    deadline = time.monotonic() + 10
    while len(seen) < 3 or len(set(seen[-3:])) > 1:  # the same place three frames running
        if time.monotonic() > deadline:
            raise TimeoutError(f"the widget to tap kept moving: {seen[-3:]}")
        seen.append(on_ui(where))

    def do() -> float:
        widget = find()
        x, y = widget.to_window(*widget.center)
        touch = UnitTestTouch(x, y)
        touch.touch_down()
        touch.touch_up()
        return time.monotonic()

    return float(on_ui(do))


def screenshot(app: Any, path: Path) -> str:
    """The window as a PNG (Kivy may add a counter to the name); the path written."""
    from kivy.core.window import Window

    settled(app)
    time.sleep(0.3)  # let labels and textures settle

    def take() -> str:
        # glReadPixels reads the back buffer, which after a swap holds an older frame
        # (with nothing changing, a mid-fade one): draw the current screen into it first.
        Window.dispatch("on_draw")
        return str(Window.screenshot(name=str(path)))

    return str(on_ui(take))


def run_driver(module: str, out: Path, display: str, window: str) -> dict[str, Any]:
    """Run a scenario module's driver (`python -m module out`, whose `_driver_main` writes
    `out/report.json`) in its own Kivy process under Xvfb `display`, with a `window`-sized
    window; its report. Fails the test with the driver's stderr if it crashed or reported
    an error. (Its own process: Kivy reconfigures logging and owns the main thread.)"""
    import json
    import subprocess
    import sys

    import pytest

    from tests.test_ui import REPO, _kivy_env, _need_kivy

    _need_kivy()
    env = _kivy_env(out / "kivy-home")
    env.update(DISPLAY=display, SDL_VIDEODRIVER="x11", O2O_UI_WINDOW=window)
    proc = subprocess.run(
        [sys.executable, "-m", module, str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    report_path = out / "report.json"
    if not report_path.exists():
        pytest.fail(f"the UI driver crashed (status {proc.returncode}):\n{proc.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    assert "error" not in report, f"{report['error']}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    return report
