"""What every kiosk screen shares: .kv loading, and returning to the start screen.

A customer walks away mid-screen all the time; every screen other than the start
screen therefore goes back by itself after a while, and on any touch.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

from kivy.animation import Animation
from kivy.clock import Clock
from kivy.lang import Builder
from kivy.properties import BooleanProperty, ColorProperty, NumericProperty
from kivy.uix.button import Button
from kivy.uix.label import Label
from kivy.uix.screenmanager import Screen
from kivy.uix.widget import Widget

from kiosk.screens import shapes  # noqa: F401  (RoundLine, for the .kv rules)
from kiosk.screens.palette import AMBER, INK, NAVY

START = "start"


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None (another C library, or none to be found)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system. Each customer's screens make
    and drop textures and widgets; glibc keeps what was freed, scattered between what
    is still in use, so without this a kiosk's memory creeps up over a day. Called when
    the start screen comes back, when nobody waits on the UI (it takes well under a
    millisecond on a PC, see bench/bench_ui.py)."""
    if _TRIM is not None:
        _TRIM(0)


def load_kv(module_file: str) -> None:
    """Load the .kv file next to a screen module once, however often it is imported."""
    path = str(Path(module_file).with_suffix(".kv"))
    if path not in Builder.files:
        Builder.load_file(path)


class BigButton(Button):
    """A large rounded button; colours come from the .kv, not from Kivy's grey images."""

    fill = ColorProperty(AMBER)
    ink = ColorProperty(NAVY)
    radius = NumericProperty(18.0)


class CountdownBar(Widget):
    """A thin bar showing how long until the screen goes back by itself."""

    fraction = NumericProperty(1.0)
    ink = ColorProperty(INK)


class FitLabel(Label):
    """A wrapping label that shrinks its font, down to `min_scale` of `font_max`, until
    its text takes at most `fit_lines` lines at its width: a long name or a long
    translation stays whole instead of pushing the rest of the screen off its bottom."""

    font_max = NumericProperty(30.0)
    fit_lines = NumericProperty(2)
    min_scale = NumericProperty(0.6)

    def __init__(self, **kwargs: Any) -> None:
        self._fitting = Clock.create_trigger(lambda _dt: self.fit())
        super().__init__(**kwargs)
        self.bind(text=self._fitting, width=self._fitting, font_max=self._fitting)
        self.bind(fit_lines=self._fitting, bold=self._fitting)
        self._fitting()

    def lines_at(self, font_size: float) -> int:
        """How many lines the text takes at this font size and the label's width."""
        from kivy.core.text import Label as CoreLabel

        core = CoreLabel(
            text=self.text,
            font_size=font_size,
            font_name=self.font_name,
            bold=self.bold,
            text_size=(max(1.0, self.width), None),
            halign=self.halign,
        )
        core.refresh()
        return len(getattr(core, "_cached_lines", ())) or 1

    def fit(self) -> None:
        size, smallest = float(self.font_max), float(self.font_max) * self.min_scale
        if self.text and self.width > 1:
            while size * 0.9 >= smallest and self.lines_at(size) > self.fit_lines:
                size *= 0.9
        self.font_size = size


load_kv(__file__)


class CustomerScreen(Screen):
    """A screen that returns to the start screen after `timeout_s`, or on a touch."""

    #: False on screens people type on: a thumb that misses a key must not throw away
    #: what they typed; a stray touch there only restarts the countdown.
    stray_touch_goes_home = True

    #: Seconds before going back to the start screen by itself (0: never).
    timeout_s = NumericProperty(0.0)
    #: 1 -> 0 while the screen waits to go back; drawn as a bar so people see it will.
    remaining = NumericProperty(1.0)
    #: Taller than wide (a portrait display): the .kv stacks what sits side by side.
    portrait = BooleanProperty(False)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timer: Any = None

    def restart_timer(self) -> None:
        """Start (or start again, for a new outcome) the countdown back to start."""
        self.cancel_timer()
        self.remaining = 1.0
        if self.timeout_s > 0:
            self._timer = Clock.schedule_once(lambda _dt: self.go_home(), self.timeout_s)
            Animation(remaining=0.0, duration=self.timeout_s).start(self)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        Animation.cancel_all(self, "remaining")

    def on_pre_enter(self, *args: Any) -> None:
        self.restart_timer()

    def on_leave(self, *args: Any) -> None:
        self.cancel_timer()

    def on_touch_down(self, touch: Any) -> bool:
        if self.manager is None or self.manager.current != self.name:
            return False  # still fading in or out: not this screen's touch yet
        if not self.stray_touch_goes_home:
            self.restart_timer()  # someone is using this screen: give them the full time
            super().on_touch_down(touch)
            return True
        if super().on_touch_down(touch):
            return True  # a button on the screen took it
        self.go_home()
        return True

    def go_home(self) -> None:
        self.cancel_timer()
        if self.manager is not None and self.manager.current != START:
            self.manager.current = START
